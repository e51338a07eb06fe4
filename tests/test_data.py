"""reft_trl.data.formats and reft_trl.data.loaders: the reference formats, the loaders and their validation."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trl.data_utils import is_conversational

from reft_trl.data import (
    DataValidationError,
    LoadOptions,
    format_prompt,
    from_records,
    load_gsm8k,
    load_mwp,
    load_stats,
    nl_target,
    parse_gsm8k_answer,
    prompt_example,
    python_header,
    sft_example,
    split_program,
    stated_answer,
)
from reft_trl.rewards import normalize_number, score_completion

PROGRAM = 'def solution():\n    """Ann has 3 pens. She buys 2 more. How many?"""\n    pens = 3\n    pens = pens + 2\n    result = pens\n    return result'
QUESTION = "Ann has 3 pens. She buys 2 more. How many?"

# The SVAMP N-CoT annotations whose stated answer ("Therefore, the answer is <...>.") the reward would not score
# correct for answer_value: two real disagreements (svamp_929 rounds 8.93 trucks up to 9; svamp_2000 says 69.32 for
# 69.4).
SVAMP_MISMATCHES = {
    "svamp_929": ("9", "8.9333333333"),
    "svamp_2000": ("69.32%", "69.4"),
}
# Six more state a percentage of the right number ("<6%>" for 6.0): the reward reads "6%" as 6, so they agree.
SVAMP_PERCENT_STATEMENTS = {
    "svamp_338": ("6%", "6.0"),
    "svamp_834": ("25%", "25.0"),
    "svamp_1115": ("32%", "32.0"),
    "svamp_1222": ("17.6%", "17.6"),
    "svamp_1592": ("20%", "20.0"),
    "svamp_2925": ("28%", "28.0"),
}


def write_json(path, rows):
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# formats


def test_prompt_and_nl_target_are_the_reference_strings():
    assert format_prompt("  How many?\n") == "Question:\nHow many?\nAnswer reasoning:\n"
    assert nl_target(" 3 + 2 = 5\n", "5") == "3 + 2 = 5\nTherefore, the answer is: 5"
    # an annotation without reasoning gives the answer line alone, without a leading newline
    assert nl_target("  ", "42") == "Therefore, the answer is: 42"


def test_python_header_and_split_program():
    header, body = split_program(PROGRAM)
    assert header == python_header(QUESTION) == f'def solution():\n    """{QUESTION}"""\n'
    assert body == "    pens = 3\n    pens = pens + 2\n    result = pens\n    return result"
    assert header + body == PROGRAM
    with pytest.raises(ValueError, match="def solution"):
        split_program("pens = 3\nreturn pens")


@given(
    st.text(alphabet=st.characters(blacklist_characters='"\\', blacklist_categories=("Cs",)), min_size=1).filter(
        lambda q: q.strip()
    ),
    st.text(),
)
def test_split_program_inverts_the_header(question, body):
    header, rest = split_program(python_header(question) + body)
    assert header == python_header(question) and rest == body


def test_gsm8k_answer_keeps_calculator_annotations_and_strips_commas():
    answer = "He buys 2*500 = <<2*500=1000>>1000 nails.\nThen 1000+200 = <<1000+200=1200>>1,200.\n#### 1,200"
    cot, value = parse_gsm8k_answer(answer)
    assert value == "1200"
    assert nl_target(cot, value) == (
        "He buys 2*500 = <<2*500=1000>>1000 nails.\nThen 1000+200 = <<1000+200=1200>>1,200.\n"
        "Therefore, the answer is: 1200"
    )
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer("no final line")
    with pytest.raises(ValueError, match="####"):
        parse_gsm8k_answer("a\n#### 1\n#### 2")


def test_normalize_number_and_stated_answer():
    assert normalize_number(" $1,234.5 ") == "1234.5"
    assert normalize_number("so #### 1,200") == "1200"
    assert normalize_number("36%") == "36" and normalize_number("7.") == "7" and normalize_number(18) == "18"
    assert stated_answer("so 7.\n\nTherefore, the answer is <7>.") == "7"
    assert stated_answer("The answer is <3.33>.") == "3.33"
    assert stated_answer("a <1> b. Therefore, the answer is <2>.") == "2"
    assert stated_answer("3 + 4 = 7\nTherefore, the answer is: 7") == "7"
    assert stated_answer("3 + 4 = 7") is None


def test_sft_and_prompt_examples_standard_and_conversational():
    nl = sft_example(QUESTION, "3 + 2 = 5", "5", "nl")
    assert nl == {"prompt": format_prompt(QUESTION), "completion": "3 + 2 = 5\nTherefore, the answer is: 5"}
    py = sft_example(QUESTION, PROGRAM, "5", "python")
    # the header ends the prompt (as in RL), the completion is the body only, and together they are the program
    assert py["prompt"] == format_prompt(QUESTION) + python_header(QUESTION)
    assert py["prompt"][len(format_prompt(QUESTION)) :] + py["completion"] == PROGRAM
    assert not is_conversational(py)

    chat = sft_example(QUESTION, PROGRAM, "5", "python", chat=True)
    assert chat["prompt"] == [{"role": "user", "content": format_prompt(QUESTION)}]
    assert chat["completion"] == [{"role": "assistant", "content": PROGRAM}]  # the assistant writes the whole program
    assert is_conversational(chat)

    rl = prompt_example(QUESTION, "python")
    assert rl["prompt"].endswith(python_header(QUESTION)) and rl["completion_prefix"] == python_header(QUESTION)
    assert prompt_example(QUESTION, "nl")["completion_prefix"] == ""
    rl_chat = prompt_example(QUESTION, "python", chat=True)
    assert is_conversational(rl_chat) and rl_chat["completion_prefix"] == ""
    with pytest.raises(ValueError, match="cot"):
        prompt_example(QUESTION, "latex")


# ----------------------------------------------------------------------------------------------------------------------
# the real files


def test_svamp_nl_flags_exactly_the_stated_answers_the_reward_rejects(shared_data, caplog):
    with caplog.at_level(logging.WARNING, logger="reft_trl.data.loaders"):
        ds, stats = load_mwp(shared_data / "mwp_reft" / "svamp_nl.json", return_stats=True)
    assert len(ds) == stats.rows_read == stats.rows_kept == 3076  # flagged rows are kept
    assert stats.flagged == {"stated_answer_mismatch": list(SVAMP_MISMATCHES)}
    assert stats.skipped == {}
    for item_id, (stated, gold) in SVAMP_MISMATCHES.items():
        assert any(item_id in m and repr(stated) in m and repr(gold) in m for m in stats.messages)
    assert "2 rows flagged" in caplog.text and "svamp_929" in caplog.text
    for item_id, (stated, gold) in SVAMP_PERCENT_STATEMENTS.items():  # kept unflagged: the reward accepts them
        assert not any(item_id in m for m in stats.messages)
        assert score_completion(f"Therefore, the answer is: {stated}", gold) == 1.0
    for stated, gold in SVAMP_MISMATCHES.values():
        assert score_completion(f"Therefore, the answer is: {stated}", gold) == 0.1
    assert load_stats(ds) == stats  # also stored in dataset.info.description
    row = ds[0]
    assert row["item_id"] == "svamp_0" and row["answer"] == "203.0" and row["cot"] == "nl"
    assert row["answer_format"] == "numeric"
    assert row["prompt"].startswith("Question:\ntyler an animal") and row["prompt"].endswith("\nAnswer reasoning:\n")
    assert row["completion"].endswith("Therefore, the answer is <203>.\nTherefore, the answer is: 203.0")


def test_svamp_python_puts_the_header_in_the_prompt(shared_data):
    ds, stats = load_mwp(shared_data / "mwp_reft" / "svamp_python_sdp.json", return_stats=True)
    assert len(ds) == 3043 and set(ds["cot"]) == {"python"}
    # 37 programs have a docstring that differs from the question (tokenised differently): header rebuilt, kept
    assert len(stats.flagged["header_differs"]) == 37 and "svamp_109" in stats.flagged["header_differs"]
    for row in ds.select(range(0, 3043, 97)):
        header = python_header(row["question"])
        assert row["prompt"] == format_prompt(row["question"]) + header
        assert row["completion"].startswith("    ") and row["completion"].endswith("return result")
        assert "def solution" not in row["completion"]


def test_authors_test_sets_load_as_prompt_rows(shared_data):
    folder = shared_data / "mwp_reft"
    mathqa = load_mwp(folder / "mathqa_test_set.json", kind="rl")
    assert len(mathqa) == 1605 and set(mathqa["answer"]) == set("abcde")
    assert load_stats(mathqa).split == "test" and load_stats(mathqa).dataset == "mathqa"
    assert set(mathqa["answer_format"]) == {"multiple_choice"} and "a ) 38 , b ) 27.675" in mathqa[0]["prompt"]
    numeric = load_mwp(folder / "mathqa-numeric_test_set.json", kind="rl")  # "mathqa-numeric" is not "mathqa"
    assert set(numeric["answer_format"]) == {"numeric"} and numeric[0]["answer"] == "38.0"
    # a folder in the authors' layout resolves {dataset}_{split}_set.json
    svamp = load_mwp(folder, dataset="svamp", split="test", kind="rl", cot="python")
    assert len(svamp) == 1000 and svamp[0]["item_id"] == "svamp_3735"
    assert svamp[0]["prompt"].endswith(svamp[0]["completion_prefix"]) and svamp[0]["completion_prefix"].startswith(
        "def solution():"
    )
    assert set(svamp.column_names) >= {"prompt", "answer", "answer_format", "cot", "item_id", "question"}
    with pytest.raises(FileNotFoundError, match="mathqa_nl.json.*found: mathqa_test_set.json"):
        load_mwp(folder, dataset="mathqa", split="train")
    with pytest.raises(
        DataValidationError, match=r"svamp \(svamp_test_set.json\), row svamp_3735, field 'answer_cot'"
    ):
        load_mwp(folder / "svamp_test_set.json", kind="sft")


def test_gsm8k_native_file_matches_the_authors_test_set(shared_data):
    train = load_gsm8k(shared_data / "gsm8k" / "train.jsonl")
    assert len(train) == 7473
    assert train[0]["completion"] == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
        "April and May.\nTherefore, the answer is: 72"
    )
    assert not any("####" in c for c in train["completion"])
    assert all("," not in a for a in train["answer"])  # 79 golds had thousands commas
    test = load_gsm8k(shared_data / "gsm8k" / "test.jsonl", split="test", kind="rl")
    authors = json.loads((shared_data / "mwp_reft" / "gsm8k_test_set.json").read_text())
    assert test["item_id"] == [r["item_id"] for r in authors]
    assert test["question"] == [r["question"].strip() for r in authors]  # incl. 3 non-breaking spaces normalised
    assert test["answer"] == [r["answer_value"] for r in authors]
    with pytest.raises(ValueError, match="P-CoT"):
        load_gsm8k(shared_data / "gsm8k" / "train.jsonl", cot="python")


# ----------------------------------------------------------------------------------------------------------------------
# the hub code path, on local folders


def test_gsm8k_hub_code_path_on_a_local_dataset_repository(tmp_path):
    """A local copy of a hub dataset repository (README configs, like openai/gsm8k's "main") goes through the same
    ``load_dataset(id, name, split=...)`` call as the hub id."""
    repo = tmp_path / "gsm8k_repo"
    (repo / "main").mkdir(parents=True)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train.jsonl\n"
        "  - split: test\n    path: main/test.jsonl\n---\n"
    )
    rows = [
        {"question": f"Q{i}: what is {i} + 1000?", "answer": f"{i} + 1000 = {i + 1000}\n#### {i + 1000:,}"}
        for i in range(3)
    ]
    write_jsonl(repo / "main" / "train.jsonl", rows)
    write_jsonl(repo / "main" / "test.jsonl", rows[:2])
    kwargs = {"load_dataset_kwargs": {"cache_dir": str(tmp_path / "cache")}}
    test, stats = load_gsm8k(str(repo), split="test", name="main", return_stats=True, **kwargs)
    assert len(test) == 2 and test["answer"] == ["1000", "1001"]
    assert stats.source == f"{repo}[test]"
    train = load_gsm8k(str(repo), split="train", name="main", kind="rl", **kwargs)
    assert train["item_id"] == ["gsm8k_0", "gsm8k_1", "gsm8k_2"] and "completion" not in train.column_names


def test_mwp_hub_code_path_on_a_local_folder(tmp_path):
    folder = tmp_path / "reft-svamp"
    folder.mkdir()
    write_jsonl(
        folder / "train.jsonl", [{"item_id": "s_0", "question": "q?", "answer_cot": "1 + 1 = 2", "answer_value": "2"}]
    )
    ds = load_mwp(str(folder), dataset="svamp", load_dataset_kwargs={"cache_dir": str(tmp_path / "cache")})
    assert ds[0]["completion"] == "1 + 1 = 2\nTherefore, the answer is: 2"
    with pytest.raises(ValueError, match="pass dataset="):
        load_mwp(str(folder))  # "reft-svamp" names no known dataset


# ----------------------------------------------------------------------------------------------------------------------
# validation


GOOD = {"item_id": "svamp_1", "question": QUESTION, "answer_cot": "3 = 3", "answer_value": "3"}


@pytest.mark.parametrize(
    ("filename", "row", "field", "problem"),
    [
        ("svamp_nl.json", {"question": "  "}, "question", "missing or empty question"),
        ("svamp_nl.json", {"question": None}, "question", "missing or empty question"),
        ("svamp_nl.json", {"answer_value": ""}, "answer_value", "missing or empty answer"),
        ("svamp_nl.json", {"answer_value": "three"}, "answer_value", "'numeric' answer format"),
        ("svamp_nl.json", {"answer_value": "nan"}, "answer_value", "as a finite number"),
        ("svamp_nl.json", {"answer_value": "1,5"}, "answer_value", "as a finite number"),  # the reward's parser
        ("mathqa_nl.json", {"answer_value": "f"}, "answer_value", "one option letter from 'abcde'"),
        ("mathqa_nl.json", {"answer_value": "38"}, "answer_value", "'multiple_choice' answer format"),
        ("svamp_nl.json", {"answer_cot": None}, "answer_cot", "missing"),
        ("svamp_nl.json", {"answer_cot": PROGRAM}, "answer_cot", "P-CoT program where an N-CoT"),
        ("svamp_python_sdp.json", {"answer_cot": "pens = 3"}, "answer_cot", "expected a P-CoT program"),
    ],
)
def test_validation_errors_name_dataset_row_field_and_value(tmp_path, filename, row, field, problem):
    bad = {**GOOD, "item_id": "svamp_2", **row}
    path = write_json(tmp_path / filename, [GOOD | {"answer_cot": PROGRAM if "python" in filename else "3 = 3"}, bad])
    if filename.startswith("mathqa"):
        path = write_json(tmp_path / filename, [{**GOOD, "answer_value": "b"}, {**bad}])
    with pytest.raises(DataValidationError) as info:
        load_mwp(path)
    message = str(info.value)
    dataset = filename.split("_")[0]
    assert message.startswith(f"{dataset} ({filename}), row svamp_2, field {field!r}: ")
    assert problem in message
    assert repr(bad.get(field))[:40] in message
    assert info.value.item_id == "svamp_2" and info.value.field == field


def test_skip_counts_and_reports_every_dropped_row(tmp_path, caplog):
    rows = [GOOD] + [{**GOOD, "item_id": f"svamp_{i}", "answer_value": "x"} for i in range(2, 9)]
    rows += [{**GOOD, "item_id": "svamp_9", "question": ""}, dict(GOOD)]  # empty question, duplicate id
    path = write_json(tmp_path / "svamp_nl.json", rows)
    with caplog.at_level(logging.WARNING, logger="reft_trl.data.loaders"):
        ds, stats = load_mwp(path, on_invalid="skip", return_stats=True)
    assert ds["item_id"] == ["svamp_1"]
    assert (stats.rows_read, stats.rows_kept) == (10, 1)
    assert stats.skipped == {
        "not a gold answer of the 'numeric' answer format": [f"svamp_{i}" for i in range(2, 9)],
        "missing or empty question": ["svamp_9"],
        "duplicate item_id": ["svamp_1"],
    }
    assert len(stats.messages) == 9
    assert "skipped 7 rows: not a gold answer of the 'numeric' answer format" in caplog.text
    assert "svamp_2, svamp_3, svamp_4, svamp_5, svamp_6" in caplog.text and "svamp_7" not in caplog.text  # first ids
    assert load_stats(ds).skipped == stats.skipped
    with pytest.raises(DataValidationError, match="duplicate item_id"):
        load_mwp(write_json(tmp_path / "svamp_nl.json", [GOOD, GOOD]))


def test_flagged_rows_are_kept_and_counted(tmp_path, caplog):
    rows = [
        {**GOOD, "answer_cot": "So 4.\n\nTherefore, the answer is <4>."},  # disagrees with 3
        {**GOOD, "item_id": "svamp_2", "answer_cot": "Therefore, the answer is <3.0>."},  # agrees
        {**GOOD, "item_id": "svamp_3", "answer_cot": ""},  # no reasoning: the answer line alone
    ]
    with caplog.at_level(logging.WARNING, logger="reft_trl.data.loaders"):
        ds, stats = load_mwp(write_json(tmp_path / "svamp_nl.json", rows), return_stats=True)
    assert len(ds) == 3
    assert stats.flagged == {"stated_answer_mismatch": ["svamp_1"], "empty_cot": ["svamp_3"]}
    assert ds[2]["completion"] == "Therefore, the answer is: 3"
    assert "stated_answer_mismatch" in caplog.text and "svamp_1" in caplog.text


def test_gsm8k_bad_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"question": "q", "answer": "1\n#### 1"}, {"question": "q2", "answer": "no final line"}],
    )
    with pytest.raises(
        DataValidationError, match=r"gsm8k \(train.jsonl\), row gsm8k_1, field 'answer': expected exactly one"
    ):
        load_gsm8k(path)
    ds, stats = load_gsm8k(path, on_invalid="skip", return_stats=True)
    assert len(ds) == 1 and sum(len(v) for v in stats.skipped.values()) == 1
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DataValidationError, match="line 2"):
        load_gsm8k(broken)


def test_dataset_and_cot_inference(tmp_path):
    program_rows = [{**GOOD, "answer_cot": PROGRAM}]
    assert load_mwp(write_json(tmp_path / "svamp_python_sdp.json", program_rows))[0]["cot"] == "python"
    # no hint in the name: the annotations say it is a program
    assert load_mwp(write_json(tmp_path / "svamp.json", program_rows))[0]["cot"] == "python"
    with pytest.raises(ValueError, match="pass dataset="):
        load_mwp(write_json(tmp_path / "mystery.json", [GOOD]))
    with pytest.raises(ValueError, match="answer_format"):
        load_mwp(tmp_path / "mystery.json", dataset="mystery")
    ds = load_mwp(tmp_path / "mystery.json", dataset="mystery", answer_format="numeric", kind="rl")
    assert ds[0]["answer_format"] == "numeric"


def test_every_loader_takes_one_options_object_or_its_fields_as_keywords(tmp_path):
    records = [{**GOOD, "answer_cot": PROGRAM}]
    by_keywords = from_records(records, dataset="svamp", kind="rl", cot="python", chat=True)
    by_object = from_records(records, dataset="svamp", options=LoadOptions(kind="rl", cot="python", chat=True))
    assert by_keywords.to_list() == by_object.to_list()
    # keywords replace the object's fields; cot=None is the data's own (load_mwp) or "nl"
    path = write_json(tmp_path / "svamp.json", records)
    ds, stats = load_mwp(path, options=LoadOptions(kind="rl"), return_stats=True)
    assert ds[0]["cot"] == "python" and stats.kind == "rl"
    assert from_records([GOOD], dataset="svamp", options=LoadOptions(kind="rl"))[0]["cot"] == "nl"
    with pytest.raises(TypeError, match=r"load_mwp\(\) got an unexpected keyword argument 'kinds'.*kind, cot, chat"):
        load_mwp(path, kinds="rl")
    with pytest.raises(ValueError, match="kind must be one of"):
        from_records([GOOD], dataset="svamp", kind="eval")
    with pytest.raises(ValueError, match="on_invalid must be 'raise' or 'skip', got 'drop'"):
        load_gsm8k(path, on_invalid="drop")
    with pytest.raises(ValueError, match="Unknown cot 'latex'"):
        LoadOptions(cot="latex")
    with pytest.raises(TypeError, match="options must be a reft_trl.data.LoadOptions"):
        from_records([GOOD], dataset="svamp", options={"kind": "rl"})


def test_chat_rows_are_conversational_and_extra_fields_pass_through():
    records = [{**GOOD, "answer_cot": PROGRAM, "difficulty": 3}]
    sft = from_records(records, dataset="svamp", cot="python", chat=True)
    assert is_conversational(sft[0]) and sft[0]["completion"][0]["content"] == PROGRAM
    assert sft[0]["difficulty"] == 3
    rl = from_records(records, dataset="svamp", cot="python", kind="rl", chat=True)
    assert rl[0]["prompt"] == [{"role": "user", "content": format_prompt(GOOD["question"])}]


def test_sft_rows_get_exactly_one_eos_from_trl(tmp_path):
    """SFTTrainer appends the EOS itself: our completions must not carry one (no doubled EOS), and the tokenised
    prompt must be a prefix of prompt + completion (loss on the completion only)."""
    from trl import SFTConfig, SFTTrainer

    from reft_trl.models.tiny import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    ds = from_records([{**GOOD, "answer_cot": PROGRAM}], dataset="svamp", cot="python")
    args = SFTConfig(output_dir=str(tmp_path), report_to=[], max_length=None, dataset_num_proc=None, use_cpu=True)
    trainer = SFTTrainer(model=tiny_llama(tok), args=args, train_dataset=ds, processing_class=tok)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
    prompt_len = len(tok(ds[0]["prompt"])["input_ids"])
    assert ids[:prompt_len] == tok(ds[0]["prompt"])["input_ids"]
    assert labels == [-100] * prompt_len + ids[prompt_len:]  # the loss covers the program body and the EOS only
    assert tok.decode(ids[prompt_len:-1]) == split_program(PROGRAM)[1]
