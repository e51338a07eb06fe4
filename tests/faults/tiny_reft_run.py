"""A tiny ReFT run for tests/test_faults.py, SIGKILLed at a chosen stage of one checkpoint's write.

    python tiny_reft_run.py --model M --output_dir D [--kill_stage STAGE --kill_step N] [--resume]

Saves a checkpoint every 2 steps (at most 2 kept), trains 6 steps, and writes the final weights to D/final. The
stages are the moments a preempted job can die while a checkpoint is written: after the model weights ("model"),
in the middle of trainer_state.json ("trainer_state"), in the middle of the rollout state ("rollout_state"), with
every file written but before the completion marker ("marker"), and after the marker but before old checkpoints
are rotated ("rotation").
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the settings and data of the test suite
from conftest import cpu_trainer_settings  # noqa: E402
from test_reft_trainer import RecordingReward, prompts_dataset  # noqa: E402

import reft_trl.trainers.rollout as rollout  # noqa: E402
from reft_trl.trainers import ReFTConfig, ReFTTrainer  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_then_die(write):
    """Wrap a writer of bytes so that it writes half of them, flushes, and the process is killed."""

    def wrapped(data, path):
        Path(path).write_bytes(data[: len(data) // 2])
        die()

    return wrapped


def install_kill(stage: str, step: int, trainer: ReFTTrainer) -> None:
    at_step = lambda: trainer.state.global_step == step  # noqa: E731
    if stage == "model":
        original = trainer._save_optimizer_and_scheduler
        trainer._save_optimizer_and_scheduler = lambda d: die() if at_step() else original(d)
    elif stage == "trainer_state":
        from transformers import TrainerState

        original_save = TrainerState.save_to_json

        def save_to_json(self, path):
            if not at_step():
                return original_save(self, path)
            import dataclasses
            import json

            text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
            half_then_die(None)(text.encode(), path)

        TrainerState.save_to_json = save_to_json
    elif stage == "rollout_state":
        import io

        import torch

        original_save = torch.save

        def save(obj, path, *args, **kwargs):
            if not at_step():
                return original_save(obj, path, *args, **kwargs)
            buffer = io.BytesIO()
            original_save(obj, buffer)
            half_then_die(None)(buffer.getvalue(), path)

        rollout.torch.save = save
    elif stage in ("marker", "rotation"):
        name = "mark_complete" if stage == "marker" else "rotate_complete"
        original = getattr(rollout, name)
        setattr(rollout, name, lambda *a, **k: die() if at_step() else original(*a, **k))
    elif stage != "none":
        raise SystemExit(f"unknown stage {stage}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--kill_stage", default="none")
    parser.add_argument("--kill_step", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    settings = dict(max_completion_length=10, seed=0, max_steps=6, save_strategy="steps", save_steps=2)
    args = ReFTConfig(**cpu_trainer_settings(cli.output_dir, save_total_limit=2, **settings))
    trainer = ReFTTrainer(model=cli.model, reward_funcs=RecordingReward(), args=args, train_dataset=prompts_dataset())
    install_kill(cli.kill_stage, cli.kill_step, trainer)
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    trainer.save_model(str(Path(cli.output_dir) / "final"))


if __name__ == "__main__":
    main()
