"""DataArguments: one dataset description for every recipe, dispatched to the right loader."""

from __future__ import annotations

import pytest
from trl import TrlParser

from reft_trl.data.args import DataArguments

SMALL = {"n_train": 12, "n_test_iid": 5, "n_test_ood": 6}


def test_synthetic_is_generated_in_memory_and_splits_concatenate():
    args = DataArguments(dataset="synthetic", cot="python", task_config=SMALL, eval_split="test_iid+test_ood")
    task = args.task()
    train = args.train_dataset("sft", task)
    assert len(train) == 12 and {"prompt", "completion", "answer"} <= set(train.column_names)
    assert train[0]["prompt"].endswith('"""\n')  # P-CoT: the program header ends the prompt
    evaluation = args.eval_dataset(task)
    assert len(evaluation) == 11
    assert set(evaluation["item_id"]) == {r["item_id"] for r in task["test_iid"] + task["test_ood"]}
    assert "completion" not in evaluation.column_names and set(evaluation["cot"]) == {"python"}


def test_limits_keep_the_first_rows():
    args = DataArguments(dataset="synthetic", task_config=SMALL, max_train_samples=5, max_eval_samples=3,
                         eval_split="test_ood")  # fmt: skip
    task = args.task()
    assert len(args.train_dataset("rl", task)) == 5
    assert args.eval_dataset(task)["item_id"] == [r["item_id"] for r in task["test_ood"][:3]]


def test_gsm8k_jsonl_and_the_authors_files_go_to_their_loaders(shared_data):
    gsm8k = DataArguments(dataset="gsm8k", data_path=str(shared_data / "gsm8k" / "test.jsonl"), eval_split="test")
    rows = gsm8k.eval_dataset()
    assert len(rows) == 1319 and rows[0]["answer"] == "18"
    authors = DataArguments(dataset="gsm8k", data_path=str(shared_data / "mwp_reft"), eval_split="test")
    assert authors.eval_dataset()["item_id"] == rows["item_id"]  # same test set, the authors' JSON copy
    svamp = DataArguments(dataset="svamp", cot="python", data_path=str(shared_data / "mwp_reft"))
    train = svamp.train_dataset("sft")
    assert len(train) == 3043
    assert train[0]["prompt"].endswith('"""\n') and train[0]["completion"].startswith("    ")  # the program body
    assert "return" in train[0]["completion"]
    mathqa = DataArguments(dataset="mathqa", data_path=str(shared_data / "mwp_reft"), eval_split="test")
    assert set(mathqa.eval_dataset()["answer_format"]) == {"multiple_choice"}


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="dataset='gsm9k' is not one of"):
        DataArguments(dataset="gsm9k")
    with pytest.raises(ValueError, match="cot='latex'"):
        DataArguments(cot="latex")
    with pytest.raises(ValueError, match="needs data_path"):
        DataArguments(dataset="svamp").train_dataset("sft")


def test_task_config_from_the_command_line_is_json():
    (args,) = TrlParser((DataArguments,)).parse_args_and_config(
        args=["--dataset", "synthetic", "--task_config", '{"shortcut_rate": 0.5, "n_train": 7}']
    )
    assert args.task_config == {"shortcut_rate": 0.5, "n_train": 7}
    assert len(args.task()["train"]) == 7
