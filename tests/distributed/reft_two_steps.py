"""Two ReFT steps on a tiny model, launched by tests/test_reft_trainer.py with `accelerate launch --config_file
recipes/accelerate/{multi_cpu,zero2_cpu}.yaml` (DDP over gloo, or DeepSpeed ZeRO-2 on CPU). The reward is a rule
plus two reward models: a one-label RM by path (TRL's path) and a 3-label classifier through RewardModel; each
process checks the scores it got against the classifiers' own outputs on its decoded texts. The checkpoint at step 2
and the final save_model folder must be deployable (tests/conftest.py:assert_deployable) and hold the trained weights."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from reft_trl.models.reward_model import RewardModel, reward_model_texts
from reft_trl.trainers import ReFTConfig, ReFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the settings shared with the test suite
from conftest import assert_deployable, cpu_trainer_settings  # noqa: E402


def reward(prompts, completions, answer, **kwargs):
    return [1.0 if a in c else 0.1 * (len(c) % 3) for c, a in zip(completions, answer, strict=True)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--reward_models", required=True, help="folder with rm/ (1 label) and classifier/ (3 labels)")
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
            save_strategy="steps",
            save_steps=2,
        )
    )
    dataset = Dataset.from_dict(
        {"prompt": [f"Q: {i} + 1 = ?\nA:" for i in range(32)], "answer": [str(i + 1) for i in range(32)]}
    )
    rm_path, classifier_path = Path(cli.reward_models) / "rm", Path(cli.reward_models) / "classifier"
    trainer = ReFTTrainer(
        model=cli.model,
        reward_funcs=[reward, str(rm_path), RewardModel(classifier_path, label=2, probability=True)],
        args=args,
        train_dataset=dataset,
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sizes, errors = [], []
    original = trainer._calculate_rewards
    references = [
        (AutoModelForSequenceClassification.from_pretrained(p).eval(), AutoTokenizer.from_pretrained(p))
        for p in (rm_path, classifier_path)
    ]

    def recording(inputs, prompts, completions, completion_ids_list):
        rewards = original(inputs, prompts, completions, completion_ids_list)
        sizes.append(rewards.shape[0])
        start = trainer.accelerator.process_index * len(prompts)
        local = rewards[start : start + len(prompts)].cpu()
        for column, (model, tok), read in (
            (1, references[0], lambda x: x[0]),
            (2, references[1], lambda x: x.softmax(-1)[2]),
        ):
            for row, (p, c, ids) in enumerate(zip(prompts, completions, completion_ids_list)):
                ended = ids[-1] in trainer.eos_token_ids  # the reward model reads EOS after a completion that ended
                (text,), special = reward_model_texts(tok, [p], [c], [ended])
                with torch.no_grad():
                    logits = model(**tok(text, add_special_tokens=special, return_tensors="pt")).logits[0]
                errors.append(abs(float(read(logits)) - float(local[row, column])))
        return rewards

    trainer._calculate_rewards = recording
    trainer.train()
    trainer.save_model(str(out / "final"))  # gathered from every process, written by the main one
    model = trainer.accelerator.unwrap_model(trainer.model)
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    flat = torch.cat([p.flatten().float() for p in after.values()])
    max_error = torch.tensor([max(errors)])
    dist.all_reduce(max_error, op=dist.ReduceOp.MAX)
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if trainer.accelerator.is_main_process:
        deployable = {}
        for name, folder in (("checkpoint-2", out / "run" / "checkpoint-2"), ("final", out / "final")):
            try:
                loaded = assert_deployable(folder, value_model="shared")
                saved_head = load_file(folder / "value_model" / "value_head.safetensors")
                exact = all(torch.equal(p, after[n]) for n, p in loaded.state_dict().items()) and torch.equal(
                    saved_head["weight"], after["v_head.weight"]
                )
                deployable[name] = "exact" if exact else "saved weights differ from the trained ones"
            except AssertionError as err:
                deployable[name] = f"not deployable: {err}"
        result = {
            "world_size": dist.get_world_size(),
            "deepspeed": trainer.is_deepspeed_enabled,
            "value_head_changed": not torch.equal(before["v_head.weight"], after["v_head.weight"]),
            "trunk_changed": any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.layers")),
            "replicas_identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
            "completions_per_rollout": sizes[0],
            "reward_model_error": float(max_error),
            "log_keys": sorted({k for entry in trainer.state.log_history for k in entry}),
            "deployable": deployable,
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    # Destroy the process group before exit: left to interpreter shutdown, gloo's threads can abort the process
    # ("terminate called without an active exception", seen once in CI after training had finished).
    trainer.accelerator.end_training()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
