"""Faults a preempted GPU job and a messy dataset meet: each is injected on purpose, and every test asserts the
required behaviour (a refusal naming what is wrong and where, or nothing lost)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cpu_trainer_settings
from datasets import Dataset
from safetensors.torch import load_file, save_file
from test_reft_trainer import RecordingReward, prompts_dataset, snapshot

import reft_trl
import reft_trl.trainers.checkpoints as checkpoints
import reft_trl.trainers.rollout as rollout
from reft_trl.data import DataValidationError, from_records, load_gsm8k, load_mwp
from reft_trl.models.value_head import MissingValueHeadError
from reft_trl.rewards import AnswerReward
from reft_trl.sandbox import SandboxPool, SandboxWarning
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.checkpoints import COMPLETE_MARKER, incomplete_reason
from reft_trl.trainers.rollout import RewardFunctionError

SCRIPT = Path(__file__).parent / "faults" / "tiny_reft_run.py"


# ---------------------------------------------------------------------------- checkpoints: complete or invisible
def run_script(tiny_checkpoint, out, *extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, str(SCRIPT), "--model", tiny_checkpoint, "--output_dir", str(out), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_script(tiny_checkpoint, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return final_weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["model", "trainer_state", "rollout_state", "marker", "rotation"])
def test_a_kill_during_a_checkpoint_write_loses_nothing_and_resumes_bit_identically(
    tiny_checkpoint, tmp_path, uninterrupted, stage
):
    """SIGKILL at each stage of writing checkpoint-4 (limit 2): the partial checkpoint is invisible, the previous
    complete one survives rotation, resume_from_checkpoint=True takes the newest complete one (saying what it
    skipped), and the resumed run ends with the uninterrupted run's weights, bit for bit."""
    killed = run_script(tiny_checkpoint, tmp_path, "--kill_stage", stage, "--kill_step", "4")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert incomplete_reason(tmp_path / "checkpoint-2") is None
    assert (incomplete_reason(tmp_path / "checkpoint-4") is None) == (stage == "rotation")
    resumed = run_script(tiny_checkpoint, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if stage != "rotation":
        assert "Skipping the incomplete checkpoint" in resumed.stderr and "checkpoint-4" in resumed.stderr
    got = final_weights(tmp_path)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=f"{name} after a kill at {stage}")
    # rotation kept the newest two complete checkpoints, and the stale partial one was replaced, not mixed in
    assert [p.name for p in checkpoints.checkpoints_by_step(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert all(incomplete_reason(p) is None for p in checkpoints.checkpoints_by_step(tmp_path))


def checkpointing_trainer(tiny_checkpoint, out, **overrides):
    settings = dict(max_completion_length=10, seed=0, save_strategy="steps", save_steps=2, save_total_limit=2)
    args = ReFTConfig(**cpu_trainer_settings(out, **{**settings, **overrides}))
    return ReFTTrainer(
        model=tiny_checkpoint, reward_funcs=RecordingReward(), args=args, train_dataset=prompts_dataset()
    )


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    trainer = checkpointing_trainer(tiny_checkpoint, tmp_path, max_steps=4)
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):
        if trainer.state.global_step == 4 and "reft_rollout_state" in str(path):  # torch's message for a full disk
            Path(path).write_bytes(b"PK\x03\x04 truncated")
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(rollout.torch, "save", full_disk)
    free = {"value": 10 << 30}
    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        checkpoints.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=free["value"])
    )  # the filesystem is full when step 4 is written
    original_step = trainer._save_checkpoint

    def at_step(*a, **k):
        free["value"] = 0 if trainer.state.global_step >= 4 else 10 << 30
        return original_step(*a, **k)

    monkeypatch.setattr(trainer, "_save_checkpoint", at_step)
    with pytest.raises(
        OSError, match=r"Could not write .*checkpoint-4/reft_rollout_state-0\.pt: the disk is full"
    ) as info:
        trainer.train()
    assert info.value.errno == errno.ENOSPC
    assert incomplete_reason(tmp_path / "checkpoint-2") is None
    assert incomplete_reason(tmp_path / "checkpoint-4") is not None
    assert checkpoints.newest_complete(tmp_path).name == "checkpoint-2"
    # a full disk while transformers writes its own files (here the optimizer state) names the checkpoint folder
    monkeypatch.setattr(rollout.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("iostream error")))
    with pytest.raises(OSError, match=r"Could not write .*checkpoint-4: the disk is full"):
        free["value"] = 0
        trainer.args.max_steps = 6
        trainer.train(resume_from_checkpoint=True)
    assert checkpoints.newest_complete(tmp_path).name == "checkpoint-2"


def test_an_enospc_from_any_write_is_reported_as_a_full_disk(tmp_path):
    def write():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=r"Could not write .*x\.bin: the disk is full"):
        checkpoints.write_or_explain(tmp_path / "x.bin", write)
    with pytest.raises(OSError, match=r"Could not write .*y\.bin: PermissionError"):
        checkpoints.write_or_explain(tmp_path / "y.bin", lambda: (_ for _ in ()).throw(PermissionError("denied")))


def test_completeness_is_checked_file_by_file(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"12345")
    assert "no reft_checkpoint_complete.json" in incomplete_reason(folder)
    checkpoints.mark_complete(folder)
    assert incomplete_reason(folder) is None
    assert json.loads((folder / COMPLETE_MARKER).read_text()) == {"files": {"a.bin": 5}}
    (folder / "a.bin").write_bytes(b"12")  # truncated afterwards
    assert "a.bin has 2 bytes, 5 were written" in incomplete_reason(folder)
    (folder / "a.bin").unlink()
    assert "a.bin is missing" in incomplete_reason(folder)
    with pytest.raises(ValueError, match=r"No complete checkpoint to resume from .*checkpoint-3: a\.bin is missing"):
        checkpoints.newest_complete(tmp_path)


def test_rotation_counts_complete_checkpoints_only(tmp_path):
    for step in (1, 2, 3, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "w").write_text("x")
        if step != 4:
            checkpoints.mark_complete(folder)
    checkpoints.rotate_complete(tmp_path, 2, [str(tmp_path / "checkpoint-1")])  # 1 is the best model: protected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-3", "checkpoint-4"]


@pytest.fixture(scope="module")
def saved_run(tiny_checkpoint, tmp_path_factory):
    """A 2-step run with a checkpoint at step 2 (shared value head)."""
    out = tmp_path_factory.mktemp("saved")
    checkpointing_trainer(tiny_checkpoint, out, max_steps=2).train()
    return out


def test_an_incomplete_checkpoint_named_explicitly_is_refused(tiny_checkpoint, saved_run, tmp_path):
    partial = tmp_path / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", partial)
    (partial / COMPLETE_MARKER).unlink()
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-2: not a complete checkpoint, no reft_"):
        checkpointing_trainer(tiny_checkpoint, tmp_path / "out", max_steps=4).train(
            resume_from_checkpoint=str(partial)
        )


def test_resuming_from_a_checkpoint_without_its_value_head_is_refused(tiny_checkpoint, saved_run, tmp_path):
    headless = tmp_path / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", headless)
    shutil.rmtree(headless / "value_model")
    checkpoints.mark_complete(headless)  # complete, but without a head
    with pytest.raises(MissingValueHeadError, match=r"saved with no critic, this run has value_model='shared'"):
        checkpointing_trainer(tiny_checkpoint, tmp_path / "out", max_steps=4).train(
            resume_from_checkpoint=str(headless)
        )


def test_the_completion_marker_covers_the_value_function(saved_run, tmp_path):
    """The value head lives in value_model/ beside the policy: a checkpoint that lost or truncated it is incomplete."""
    for damage in ("truncate", "delete"):
        copy = tmp_path / damage / "checkpoint-2"
        shutil.copytree(saved_run / "checkpoint-2", copy)
        head = copy / "value_model" / "value_head.safetensors"
        if damage == "delete":
            head.unlink()
        else:
            head.write_bytes(head.read_bytes()[:-4])
        assert "value_model/value_head.safetensors" in incomplete_reason(copy)


def test_a_checkpoint_of_an_earlier_layout_resumes_exactly(tiny_checkpoint, saved_run, tmp_path):
    """reft-trl <= 0.1 checkpoints held the head inside model.safetensors: resuming from one ends with the same
    weights as resuming from the same checkpoint in today's layout."""
    old = tmp_path / "old" / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", old)
    head = load_file(old / "value_model" / "value_head.safetensors")
    weights = load_file(old / "model.safetensors")
    save_file({**weights, "v_head.weight": head["weight"], "v_head.bias": head["bias"]}, old / "model.safetensors")
    shutil.rmtree(old / "value_model")
    checkpoints.mark_complete(old)
    finals = []
    for name, checkpoint in (("new", saved_run / "checkpoint-2"), ("old", old)):
        trainer = checkpointing_trainer(tiny_checkpoint, tmp_path / f"run-{name}", max_steps=4)
        trainer.train(resume_from_checkpoint=str(checkpoint))
        finals.append(snapshot(trainer.model))
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"value_model": "separate"}, r"saved with value_model='shared', this run has value_model='separate'"),
        (
            {"advantage_estimator": "reinforce_plus_plus"},
            r"saved with value_model='shared', this run has no critic \(advantage_estimator='reinforce_plus_plus'\)",
        ),
    ],
)
def test_resuming_across_value_models_is_refused_clearly(tiny_checkpoint, saved_run, tmp_path, overrides, message):
    trainer = checkpointing_trainer(tiny_checkpoint, tmp_path, max_steps=4, **overrides)
    before = snapshot(trainer.model)
    with pytest.raises(ValueError, match=message):
        trainer.train(resume_from_checkpoint=str(saved_run / "checkpoint-2"))
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # refused before loading


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


# ---------------------------------------------------------------------------------------------------------------
# ---- the sandbox dies with its trainer
#
# A trainer SIGKILLed (or OOM-killed) mid-batch cannot clean up: its keepers, zygotes and the programs they run
# must go by themselves within seconds, start no new program, and leave no scratch folder that the next pool does
# not remove. Sandbox processes are found by their command line, which carries their worker's (unique) scratch
# path: keepers, zygotes and programs alike (programs are clones of the zygote, without exec).

SRC = str(Path(reft_trl.__file__).resolve().parents[1])
SBX_DISABLE = tuple(x for x in os.environ.get("REFT_SANDBOX_TEST_DISABLE", "").split(",") if x)
DEATH_LIMIT_S = 10.0  # every sandbox process must be gone this long after its trainer's SIGKILL
LOOP = "def solution():\n    while True:\n        pass\n"  # pure: several share one process
LOOP_ALONE = "def solution():\n    x = [0]\n    while True:\n        x[0] += 1\n"  # not pure: a process of its own

TRAINER = textwrap.dedent(
    """
    import json, sys, threading, warnings
    warnings.simplefilter("ignore")
    from reft_trl.sandbox import SandboxPool

    cfg = json.loads(sys.argv[1])

    def main():
        pool = SandboxPool(num_workers=1, max_concurrent=2, timeout=60.0, disable=cfg["disable"]).start()
        scratch = [w.scratch for w in pool._workers["lean"]]
        print(json.dumps({"workers": pool.worker_pids(), "scratch": scratch}), flush=True)
        pool.run(cfg["programs"])  # 60 s per program: the test kills us long before

    if cfg["thread"]:  # the keepers' parent thread is not the main thread (no parent-death signal for them)
        t = threading.Thread(target=main)
        t.start()
        t.join()
    else:
        main()
    """
)


def _sandbox_processes(markers: list[bytes]) -> dict[int, int]:
    """pid -> ppid of every live process whose command line carries one of ``markers`` (zombies excluded)."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{d}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state not in ("Z", "X") and any(m in cmdline for m in markers):
            found[int(d)] = int(ppid)
    return found


def _kill_leftovers(markers: list[bytes]) -> None:
    """After a failure: SIGKILL what is left of this test's sandbox (only processes carrying its markers)."""
    for _ in range(20):
        left = _sandbox_processes(markers)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _markers(scratch: list[str]) -> list[bytes]:
    return [s.encode().hex().encode() for s in scratch]  # the worker's config, hex-encoded, is its argv


def _read_line(proc: subprocess.Popen, limit_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], limit_s)
    assert ready, f"trainer printed nothing within {limit_s} s"
    line = proc.stdout.readline()
    assert line, f"trainer exited early (rc={proc.poll()})"
    return line


def _wait_for(cond, limit_s: float, what: str):
    end = time.monotonic() + limit_s
    while not (value := cond()):
        assert time.monotonic() < end, f"{what}: not within {limit_s} s"
        time.sleep(0.05)
    return value


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("thread", "disable"),
    [(False, ()), (True, ()), (False, ("namespaces",))],
    ids=["main-thread", "worker-thread", "no-namespaces"],
)
def test_sigkilled_trainer_takes_its_busy_sandbox_along(tmp_path, monkeypatch, thread, disable):
    tmp = tmp_path / "tmp"  # a private TMPDIR: other pools on this machine neither see nor touch these folders
    tmp.mkdir()
    # More than the 2 slots can take: jobs are still queued when the trainer dies, and the pure loops share a
    # process (the rest of its jobs must not be run again after the trainer's death).
    programs = [LOOP] * 6 + [LOOP_ALONE] * 6
    cfg = {"thread": thread, "disable": [*SBX_DISABLE, *disable], "programs": programs}
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": SRC}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, json.dumps(cfg)], stdout=subprocess.PIPE, env=env, text=True
    )
    info = {"scratch": []}
    try:
        info = json.loads(_read_line(trainer, 90))
        ((keeper, zygote),) = info["workers"]
        markers = _markers(info["scratch"])
        # Mid-batch: the zygote runs infinite loops, and more of them are queued.
        _wait_for(
            lambda: zygote in _sandbox_processes(markers).values(),
            30,
            "programs running",
        )
        before = set(_sandbox_processes(markers))
        assert {keeper, zygote} <= before
        trainer.kill()
        trainer.wait(10)
        killed_at = time.monotonic()
        seen: set[int] = set()

        def all_gone() -> bool:
            alive = _sandbox_processes(markers)
            seen.update(alive)
            return not alive

        _wait_for(all_gone, DEATH_LIMIT_S, "every sandbox process dies with its trainer")
        took = time.monotonic() - killed_at
        time.sleep(0.5)  # and nothing comes back
        assert not _sandbox_processes(markers)
        assert not seen - before, f"program processes started after the trainer died: {sorted(seen - before)}"
        print(f"sandbox gone {took:.2f} s after the trainer's SIGKILL")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        _kill_leftovers(_markers(info["scratch"]))

    # The dead trainer could not remove its scratch folders: the next pool to start does.
    assert all(os.path.isdir(s) for s in info["scratch"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        with SandboxPool(num_workers=1, disable=SBX_DISABLE) as live:
            live.start()
            assert not any(os.path.exists(s) for s in info["scratch"]), "stale scratch folders not reclaimed"
            mine = live._workers["lean"][0].scratch
            with SandboxPool(num_workers=1, disable=SBX_DISABLE) as other:  # a live owner's folder is kept
                other.start()
                assert os.path.isdir(mine)
            assert live.run(["def solution():\n    return 6 * 7\n"]) == [42.0]
    assert not os.listdir(tmp), "closed pools leave their folders behind"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("disable", [(), ("namespaces",)], ids=["default", "no-namespaces"])
def test_programs_die_with_their_zygote(disable):
    """The zygote enforces deadlines: a program must not outlive it, whether or not it is the init of a pid
    namespace (with namespaces off, each program's parent-death signal kills it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        pool = SandboxPool(num_workers=1, max_concurrent=2, timeout=60.0, disable=(*SBX_DISABLE, *disable)).start()
    with pool:
        ((_keeper, zygote),) = pool.worker_pids()
        markers = _markers([pool._workers["lean"][0].scratch])
        results = []
        runner = threading.Thread(target=lambda: results.extend(pool.run_detailed([LOOP_ALONE] * 2)))
        runner.start()
        running = _wait_for(
            lambda: {p for p, pp in _sandbox_processes(markers).items() if pp == zygote},
            30,
            "programs running",
        )
        os.kill(zygote, signal.SIGKILL)
        try:
            _wait_for(lambda: not set(_sandbox_processes(markers)) & running, DEATH_LIMIT_S, "programs die")
        finally:
            _kill_leftovers(markers)
        runner.join(DEATH_LIMIT_S)
        assert not runner.is_alive()
        assert [r.status for r in results] == ["worker_lost"] * 2


def test_a_checkpoint_from_before_markers_can_be_adopted(saved_run, tmp_path):
    old = tmp_path / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", old)
    (old / COMPLETE_MARKER).unlink()
    assert incomplete_reason(old) is not None
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "reft_trl.trainers.checkpoints", "adopt", str(old)]
    subprocess.run(argv, check=True, capture_output=True, env=env)
    assert incomplete_reason(old) is None
    (old / COMPLETE_MARKER).unlink()
    (old / "reft_rollout_state-0.pt").unlink()  # a partial save is not adopted
    with pytest.raises(ValueError, match="no rollout state"):
        checkpoints.adopt(old)
