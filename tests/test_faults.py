"""Faults injected on purpose: every test asserts the required behaviour (a refusal naming what is wrong, and where)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from conftest import cpu_trainer_settings
from datasets import Dataset

from reft_trl.data import DataValidationError, from_records, load_gsm8k, load_mwp
from reft_trl.rewards import AnswerReward
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.rollout import RewardFunctionError

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


# ---- bad data is found before training: the trainer checks every row before step 0


def rl_rows(n=16, cot="nl", columns=None):
    """``n`` prompt-only rows as the loaders write them (the default reward's columns included), with ``columns``
    replaced (a list of values) or removed (``None``)."""
    records = [{**GOOD, "item_id": f"svamp_{i}", "question": f"{QUESTION} ({i})"} for i in range(n)]
    ds = from_records(records, dataset="svamp", kind="rl", cot=cot)
    for name, values in (columns or {}).items():
        ds = ds.remove_columns(name) if values is None else ds.remove_columns(name).add_column(name, values)
    return ds


def trainer_for(tiny_checkpoint, tmp_path, dataset, reward=None, **config):
    settings = cpu_trainer_settings(tmp_path / "out", **{"max_completion_length": 8, "seed": 0, **config})
    return ReFTTrainer(model=tiny_checkpoint, reward_funcs=reward, args=ReFTConfig(**settings), train_dataset=dataset)


def test_bad_golds_are_reported_by_dataset_index_and_field_before_step_0(tiny_checkpoint, tmp_path):
    answers = ["5"] * 16
    answers[3], answers[11] = "1,5", "three"
    with pytest.raises(ValueError) as info:
        trainer_for(tiny_checkpoint, tmp_path, rl_rows(columns={"answer": answers}))
    message = str(info.value)
    assert "2 of 16 rows cannot be scored by the reward function 'answer_reward'" in message
    assert "row 3 (item_id svamp_3), field 'answer': Cannot parse the gold answer '1,5'" in message
    assert "row 11 (item_id svamp_11), field 'answer': Cannot parse the gold answer 'three'" in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_at_most_ten_bad_rows_are_listed_with_the_total(tiny_checkpoint, tmp_path):
    formats = ["numeric"] * 4 + ["no_such_format"] * 12
    with pytest.raises(ValueError) as info:
        trainer_for(tiny_checkpoint, tmp_path, rl_rows(columns={"answer_format": formats}))
    message = str(info.value)
    assert "12 of 16 rows cannot be scored" in message and "The first 10:" in message
    assert message.count("field 'answer_format': Unknown answer_format 'no_such_format'") == 10
    assert "row 4 (item_id svamp_4)" in message and "row 13 " in message and "row 14 " not in message


def test_p_cot_rows_without_a_cot_column_are_refused(tiny_checkpoint, tmp_path):
    """P-CoT prompts end with the program header; without a cot column the reward scored them as N-CoT: always 0."""
    with pytest.raises(ValueError) as info:
        trainer_for(tiny_checkpoint, tmp_path, rl_rows(cot="python", columns={"cot": None}))
    message = str(info.value)
    assert "16 of 16 rows cannot be scored" in message
    assert "row 0 (item_id svamp_0), field 'cot': the prompt ends with a P-CoT program header" in message
    assert "the reward's default cot" in message
    # the same rows with their cot column train (their prompts end with the header, the reward runs the programs)
    trainer = trainer_for(tiny_checkpoint, tmp_path, rl_rows(cot="python"))
    assert trainer.train_dataset[0]["cot"] == "python"


def test_p_cot_prompts_marked_nl_are_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"field 'cot': the prompt ends .* \(cot 'nl' from its 'cot' column\)"):
        trainer_for(tiny_checkpoint, tmp_path, rl_rows(cot="python", columns={"cot": ["nl"] * 16}))


def test_an_empty_dataset_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        trainer_for(tiny_checkpoint, tmp_path, rl_rows().select([]))


def test_fewer_rows_than_one_rollout_are_refused_with_the_numbers(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError) as info:
        trainer_for(tiny_checkpoint, tmp_path, rl_rows(7), gradient_accumulation_steps=2)
    message = str(info.value)
    assert "train_dataset has 7 rows, fewer than the 8 prompts of one rollout" in message
    assert "per_device_train_batch_size 4 x 1 processes x steps_per_generation 2" in message
    assert len(trainer_for(tiny_checkpoint, tmp_path, rl_rows(8), gradient_accumulation_steps=2).train_dataset) == 8


def test_prompts_longer_than_the_context_are_refused(tiny_checkpoint, tmp_path):
    """The tiny model has 1024 positions and one token per character; TRL does not truncate prompts."""
    prompts = [f"Q{i}: what is 2 + 3?\nA:" for i in range(16)]
    prompts[5] = "x" * 1017  # 1017 tokens (no BOS): fits with 7 completion tokens, not with 8
    dataset = Dataset.from_dict({"prompt": prompts, "answer": ["5"] * 16})
    with pytest.raises(ValueError) as info:
        trainer_for(tiny_checkpoint, tmp_path, dataset)
    message = str(info.value)
    assert "1 of 16 prompts are longer than 1016 tokens" in message
    assert "(max_position_embeddings=1024) minus max_completion_length=8" in message
    assert "row 5, field 'prompt': 1017 tokens" in message
    assert trainer_for(tiny_checkpoint, tmp_path, dataset, max_completion_length=7).max_completion_length == 7


# ---- misbehaving reward callables


class ScriptedReward:
    """A reward function returning ``make(n)`` for a batch of ``n`` completions (or raising what ``make`` raises)."""

    def __init__(self, make, name="scripted_reward"):
        self.make = make
        self.__name__ = name

    def __call__(self, prompts, completions, **kwargs):
        return self.make(len(completions))


def prompt_rows(n=16):
    return Dataset.from_dict({"prompt": [f"Q{i}: 2 + 3 = ?\nA:" for i in range(n)], "answer": ["5"] * n})


def test_a_reward_returning_strings_stops_training_naming_function_step_and_value(tiny_checkpoint, tmp_path):
    """TRL's own error was "too many dimensions 'str'"."""
    reward = ScriptedReward(lambda n: ["1.0"] * n, name="string_reward")
    trainer = trainer_for(tiny_checkpoint, tmp_path, prompt_rows(), reward=reward)
    with pytest.raises(ValueError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("Reward function 'string_reward' returned '1.0' (str) for completion 0 at step 0,")
    assert "prompt 'Q" in message and "every score must be a number or None" in message


def test_a_reward_that_raises_is_reraised_with_its_name_and_step(tiny_checkpoint, tmp_path):
    def broken(n):
        raise KeyError("answer_column")

    trainer = trainer_for(tiny_checkpoint, tmp_path, prompt_rows(), reward=ScriptedReward(broken, name="broken"))
    with pytest.raises(RewardFunctionError) as info:
        trainer.train()
    assert str(info.value).startswith(
        "Reward function 'broken' raised KeyError at step 0 (training, 4 completions): 'answer_column'"
    )
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda n: [[1.0, 0.0]] * n, "returned [1.0, 0.0] (list) for completion 0 at step 0"),  # nested lists
        (lambda n: [1.0] * (n - 1) + [{"score": 1}], "returned {'score': 1} (dict) for completion 3 at step 0"),
        (lambda n: "1.0", "returned '1.0' (str) at step 0; expected a list of 4 numbers"),
        (lambda n: 1.0, "returned 1.0 (float) at step 0; expected a list of 4 numbers"),
        (lambda n: [1.0] * (n + 1), "returned 5 scores at step 0 for 4 completions"),
    ],
)
def test_malformed_reward_outputs_are_named(tiny_checkpoint, tmp_path, make, expected):
    trainer = trainer_for(tiny_checkpoint, tmp_path, prompt_rows(), reward=ScriptedReward(make))
    inputs = [dict(row) for row in prompt_rows(4)]
    prompts = [row["prompt"] for row in inputs]
    with pytest.raises(ValueError, match="^Reward function 'scripted_reward' " + re.escape(expected)):
        trainer._calculate_rewards(inputs, prompts, ["A: 5"] * 4, [[1, 2]] * 4)


def test_numbers_of_every_kind_and_none_are_accepted(tiny_checkpoint, tmp_path):
    scores = [np.float32(0.5), True, torch.tensor(0.25), None]
    trainer = trainer_for(tiny_checkpoint, tmp_path, prompt_rows(), reward=ScriptedReward(lambda n: scores))
    inputs = [dict(row) for row in prompt_rows(4)]
    rewards = trainer._calculate_rewards(inputs, [r["prompt"] for r in inputs], ["A: 5"] * 4, [[1, 2]] * 4)
    assert rewards[:3, 0].tolist() == [0.5, 1.0, 0.25] and torch.isnan(rewards[3, 0])
    assert trainer.reward_funcs[0].__name__ == "scripted_reward"  # the checking wrapper lives only during the call


def test_an_async_reward_that_raises_is_named_too(tiny_checkpoint, tmp_path):
    class AsyncBroken:
        __name__ = "async_broken"

        async def __call__(self, prompts, completions, **kwargs):
            raise RuntimeError("service unavailable")

    trainer = trainer_for(tiny_checkpoint, tmp_path, prompt_rows(), reward=AsyncBroken())
    inputs = [dict(row) for row in prompt_rows(4)]
    with pytest.raises(RewardFunctionError, match="^Reward function 'async_broken' raised RuntimeError at step 0"):
        trainer._calculate_rewards(inputs, [r["prompt"] for r in inputs], ["A: 5"] * 4, [[1, 2]] * 4)
