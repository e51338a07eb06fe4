"""Two ReFT steps on a tiny model, launched by tests/test_reft_trainer.py with `accelerate launch --config_file
recipes/accelerate/{multi_cpu,zero2_cpu}.yaml` (DDP over gloo, or DeepSpeed ZeRO-2 on CPU)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset

from reft_trl.trainers import ReFTConfig, ReFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the settings shared with the test suite
from conftest import cpu_trainer_settings  # noqa: E402


def reward(prompts, completions, answer, **kwargs):
    return [1.0 if a in c else 0.1 * (len(c) % 3) for c, a in zip(completions, answer, strict=True)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    out = Path(cli.output_dir)
    args = ReFTConfig(
        **cpu_trainer_settings(
            out / "run",
            max_completion_length=8,
            # On CPU: DDP needs use_cpu (else accelerate reports DistributedType.NO and gathers nothing); DeepSpeed
            # needs it off, plus an explicit gloo backend (transformers picks none for DeepSpeed without GPUs).
            use_cpu=os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
            ddp_backend="gloo",
            kl_coef=0.05,
            seed=0,
        )
    )
    dataset = Dataset.from_dict(
        {"prompt": [f"Q: {i} + 1 = ?\nA:" for i in range(32)], "answer": [str(i + 1) for i in range(32)]}
    )
    trainer = ReFTTrainer(model=cli.model, reward_funcs=reward, args=args, train_dataset=dataset)
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sizes = []
    original = trainer._calculate_rewards

    def recording(*a, **k):
        rewards = original(*a, **k)
        sizes.append(rewards.shape[0])
        return rewards

    trainer._calculate_rewards = recording
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    flat = torch.cat([p.flatten().float() for p in after.values()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if trainer.accelerator.is_main_process:
        result = {
            "world_size": dist.get_world_size(),
            "deepspeed": trainer.is_deepspeed_enabled,
            "value_head_changed": not torch.equal(before["v_head.weight"], after["v_head.weight"]),
            "trunk_changed": any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.layers")),
            "replicas_identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
            "completions_per_rollout": sizes[0],
            "log_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    # Destroy the process group before exit: left to interpreter shutdown, gloo's threads can abort the process
    # ("terminate called without an active exception", seen once in CI after training had finished).
    trainer.accelerator.end_training()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
