"""Faults injected on purpose: every test asserts the required behaviour (a refusal naming what is wrong, and where)."""

from __future__ import annotations

import json
import logging

import pytest

from reft_trl.data import DataValidationError, from_records, load_gsm8k, load_mwp
from reft_trl.rewards import AnswerReward
from reft_trl.trainers import ReFTConfig

QUESTION = "Ann has 3 pens. She buys 2 more. How many?"
GOOD = {"item_id": "svamp_1", "question": QUESTION, "answer_cot": "3 + 2 = 5", "answer_value": "5"}


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# ---- bad data is found before training: the loaders name the file, the row and the field


@pytest.mark.parametrize("gold", ["1,5", "1,0000"])
def test_ambiguous_comma_golds_are_refused_as_the_reward_refuses_them(tmp_path, gold):
    """The loader used to read "1,5" as 15 and "1,0000" as 10000; the reward calls both ambiguous. Now both refuse."""
    path = write_json(tmp_path / "svamp_nl.json", [GOOD, {**GOOD, "item_id": "svamp_2", "answer_value": gold}])
    with pytest.raises(DataValidationError) as info:
        load_mwp(path)
    assert str(info.value).startswith("svamp (svamp_nl.json), row svamp_2, field 'answer_value': ")
    assert repr(gold) in str(info.value)
    reward = AnswerReward()
    with pytest.raises(ValueError, match="finite number"):
        reward(["q"], ["Therefore, the answer is: 5"], answer=[gold])


def test_a_field_only_later_rows_have_is_kept(tmp_path):
    rows = [GOOD, {**GOOD, "item_id": "svamp_2", "difficulty": "hard"}, {**GOOD, "item_id": "svamp_3"}]
    ds = load_mwp(write_json(tmp_path / "svamp_nl.json", rows), kind="rl")
    assert ds["difficulty"] == [None, "hard", None]
    ds = from_records(rows, dataset="svamp")
    assert ds["difficulty"] == [None, "hard", None]


def test_source_fields_replaced_by_the_loaders_columns_are_reported(tmp_path, caplog):
    rows = [{**GOOD, "cot": "whatever"}]
    with caplog.at_level(logging.WARNING, logger="reft_trl.data.loaders"):
        ds, stats = load_mwp(write_json(tmp_path / "svamp_nl.json", rows), kind="rl", return_stats=True)
    assert ds["cot"] == ["nl"]
    assert "source fields ['cot'] were replaced" in caplog.text
    assert any("['cot']" in m for m in stats.messages)


@pytest.mark.parametrize(
    ("field", "first", "later", "later_type"),
    [
        ("difficulty", 3, "hard", "str"),  # an extra column: int, then str
        ("tags", ["a"], 7, "int"),  # a list, then a number
        ("meta", "x", {"k": 1}, "dict"),  # Arrow's ArrowTypeError case
    ],
)
def test_mixed_types_in_a_column_name_the_file_row_and_field(tmp_path, field, first, later, later_type):
    rows = [{**GOOD, field: first}, {**GOOD, "item_id": "svamp_2"}, {**GOOD, "item_id": "svamp_3", field: later}]
    with pytest.raises(DataValidationError) as info:
        load_mwp(write_json(tmp_path / "svamp_nl.json", rows))
    message = str(info.value)
    assert message.startswith(f"svamp (svamp_nl.json), row svamp_3, field {field!r}: mixed types in one column")
    assert f"this row has a {later_type}" in message and "row svamp_1" in message
    assert (info.value.item_id, info.value.field) == ("svamp_3", field)


def test_a_gold_stored_as_a_number_in_some_rows_and_a_string_in_others_loads(tmp_path):
    rows = [
        GOOD,
        {**GOOD, "item_id": "svamp_2", "answer_value": 5},
        {**GOOD, "item_id": "svamp_3", "answer_value": 5.5},
    ]
    ds = load_mwp(write_json(tmp_path / "svamp_nl.json", rows), kind="rl")
    assert ds["answer"] == ["5", "5", "5.5"]


def test_a_record_that_is_not_an_object_is_named(tmp_path):
    with pytest.raises(DataValidationError, match=r"svamp_nl.json\), row at index 1, field '<row>': expected a JSON"):
        load_mwp(write_json(tmp_path / "svamp_nl.json", [GOOD, ["not", "a", "row"]]))
    with pytest.raises(
        DataValidationError, match=r"<records>\), row at index 1, field '<row>': expected a dict, got str"
    ):
        from_records([GOOD, "not a row"], dataset="svamp")


def test_truncated_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "svamp_nl.json"
    path.write_text(json.dumps([GOOD, {**GOOD, "item_id": "svamp_2"}], indent=1)[:-40], encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"svamp_nl.json\), row at line \d+, field '<file>': not valid JSON"):
        load_mwp(path)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + '{"question": "q2", "ans', "utf-8")
    with pytest.raises(DataValidationError, match=r"train.jsonl\), row at line 2, field '<line>': not valid JSON"):
        load_gsm8k(jsonl)


def test_a_latin1_file_is_refused_with_its_name_and_line(tmp_path):
    path = tmp_path / "svamp_nl.json"
    text = json.dumps([GOOD, {**GOOD, "item_id": "svamp_2", "question": "Un caf\u00e9 costs 3. How much?"}], indent=1)
    path.write_bytes(text.replace("\\u00e9", "\u00e9").encode("latin-1"))
    with pytest.raises(DataValidationError, match=r"svamp_nl.json\), row at line 10, field '<file>': not UTF-8 text"):
        load_mwp(path)


def test_a_single_object_json_file_is_reported_as_such(tmp_path):
    path = tmp_path / "svamp_nl.json"
    path.write_text(json.dumps(GOOD, indent=2), encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"svamp_nl.json\).*found a single JSON object") as info:
        load_mwp(path)
    assert "not valid JSON" not in str(info.value)
    path.write_text(json.dumps({"data": [GOOD]}), encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"are the rows under 'data'\?"):
        load_mwp(path)


# ---- settings refused at config time


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cliprange": -0.2}, "cliprange/epsilon must be >= 0, got -0.2"),
        ({"epsilon": float("nan")}, "cliprange/epsilon must be >= 0, got nan"),
        ({"cliprange_value": -1.0}, "cliprange_value must be >= 0, got -1.0"),
        ({"vf_coef": -5.0}, "vf_coef must be >= 0, got -5.0"),
        ({"value_head_init_std": -0.01}, "value_head_init_std must be >= 0, got -0.01"),
        ({"program_timeout": -1.0}, "program_timeout must be a positive number of seconds, got -1.0"),
        ({"program_timeout": 0.0}, "program_timeout must be a positive number of seconds, got 0.0"),
        ({"reward_weights": [1.0, float("nan")]}, r"reward_weights must be finite numbers, got \[1.0, nan\]"),
        ({"reward_weights": [float("inf")]}, "index 0: inf"),
    ],
)
def test_bad_numbers_are_refused_at_config_time(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_zero_and_negative_reward_weights_are_still_allowed(tmp_path):
    config = ReFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, reward_weights=[1.0, -0.5, 0.0])
    assert config.reward_weights == [1.0, -0.5, 0.0]
