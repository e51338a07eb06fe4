"""Faults a preempted GPU job and a messy dataset meet: each is injected, and the required behaviour is asserted."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer_settings
from safetensors.torch import load_file, save_file
from test_reft_trainer import RecordingReward, prompts_dataset, snapshot

import reft_trl.trainers.checkpoints as checkpoints
import reft_trl.trainers.rollout as rollout
from reft_trl.models.value_head import MissingValueHeadError
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.checkpoints import COMPLETE_MARKER, incomplete_reason

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


def trainer_for(tiny_checkpoint, out, **overrides):
    settings = dict(max_completion_length=10, seed=0, save_strategy="steps", save_steps=2, save_total_limit=2)
    args = ReFTConfig(**cpu_trainer_settings(out, **{**settings, **overrides}))
    return ReFTTrainer(
        model=tiny_checkpoint, reward_funcs=RecordingReward(), args=args, train_dataset=prompts_dataset()
    )


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    trainer = trainer_for(tiny_checkpoint, tmp_path, max_steps=4)
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
    trainer_for(tiny_checkpoint, out, max_steps=2).train()
    return out


def test_an_incomplete_checkpoint_named_explicitly_is_refused(tiny_checkpoint, saved_run, tmp_path):
    partial = tmp_path / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", partial)
    (partial / COMPLETE_MARKER).unlink()
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-2: not a complete checkpoint, no reft_"):
        trainer_for(tiny_checkpoint, tmp_path / "out", max_steps=4).train(resume_from_checkpoint=str(partial))


def test_resuming_from_a_checkpoint_without_its_value_head_is_refused(tiny_checkpoint, saved_run, tmp_path):
    headless = tmp_path / "checkpoint-2"
    shutil.copytree(saved_run / "checkpoint-2", headless)
    weights = load_file(headless / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("v_head.")}, headless / "model.safetensors")
    checkpoints.mark_complete(headless)  # complete, but without a head
    with pytest.raises(MissingValueHeadError, match=r"saved with no critic, this run has value_model='shared'"):
        trainer_for(tiny_checkpoint, tmp_path / "out", max_steps=4).train(resume_from_checkpoint=str(headless))


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
    trainer = trainer_for(tiny_checkpoint, tmp_path, max_steps=4, **overrides)
    before = snapshot(trainer.model)
    with pytest.raises(ValueError, match=message):
        trainer.train(resume_from_checkpoint=str(saved_run / "checkpoint-2"))
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # refused before loading
