"""ReFT (``--trainer reft``, optionally ``--peft``: a LoRA adapter) or Online-ST (``--trainer online_st``) under a
sharding engine (DeepSpeed ZeRO-3 or FSDP2), launched by tests/test_sharded.py with `accelerate launch --config_file
recipes/accelerate/{zero3_cpu,fsdp2_cpu}.yaml` (2 CPU processes over gloo).

One launch runs two trainers: 4 steps with a checkpoint every 2 (uninterrupted), then a second trainer that resumes
from the first one's checkpoint-2 (or, with ``--resume_latest RUN``, resumes RUN with resume_from_checkpoint=True)
and runs to step 4. The rewards are a rule and a one-label reward model (by path, prepared by TRL for the engine; with the separate
critic as reft-trl's RewardModel wrapper).
Each process records how its parameters are sharded; the main process writes result.json: sharding, head and trunk
changed, the gathered weights of both processes equal, the resumed run's final weights equal the uninterrupted run's;
and trained.safetensors, the trained weights that the test compares with the final save_model folder and
checkpoint-4 (plain deployable folders, the value function beside them). Each process writes rank-N.json: its log
history, what its rule reward scored (its own completions), and whether it refused a checkpoint after a NaN was put
into one process's shard of one parameter. With ``--kill_rank R --kill_step N`` the launch only trains, and process R
SIGKILLs itself while it writes checkpoint-N (after the engine's files, before the completion marker)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import save_file

from reft_trl.models.reward_model import RewardModel
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.online_st import OnlineSTConfig, OnlineSTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the settings shared with the test suite
from conftest import cpu_trainer_settings  # noqa: E402

REWARD_CALLS: list[dict] = []
"""What the rule reward returned on this process (each process scores its own completions; TRL gathers them)."""


def reward(prompts, completions, answer, completion_ids, **kwargs):
    scores = [1.0 if a in c else 0.1 * (len(c) % 3) for c, a in zip(completions, answer, strict=True)]
    REWARD_CALLS.append(
        {
            "scores": scores,
            "lengths": [len(ids) for ids in completion_ids],
            "texts": [[p, c, ids[-1] if ids else None] for p, c, ids in zip(prompts, completions, completion_ids)],
        }
    )
    return scores


def local_shards(trainer) -> dict[str, tuple[int, int, bool]]:
    """(elements this process holds, elements of the full tensor, managed by the engine) per parameter."""
    shards = {}
    for name, p in trainer.model.named_parameters():
        if hasattr(p, "ds_tensor"):  # DeepSpeed ZeRO-3: this process's partition, and the full size (ds_numel)
            shards[name] = (p.ds_tensor.numel(), p.ds_numel, True)
        elif hasattr(p, "to_local"):  # FSDP2: a DTensor sharded on dim 0
            shards[name] = (p.to_local().numel(), p.numel(), True)
        else:
            shards[name] = (p.numel(), p.numel(), False)
    return shards


def named_parameters(trainer) -> dict[str, torch.nn.Parameter]:
    """The unwrapped model's parameters, named as in the policy without PEFT's ``base_model.model.`` prefix."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n.removeprefix("base_model.model."): p for n, p in model.named_parameters()}


def gathered_weights(trainer) -> dict[str, torch.Tensor]:
    """Every parameter in full on every process (the engine's own gather), names as in the unwrapped model."""
    params = named_parameters(trainer)
    if trainer.is_deepspeed_enabled:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone() for n, p in params.items()}


def flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[n].flatten().float() for n in sorted(weights)])


def local_elements(param: torch.Tensor) -> torch.Tensor:
    """The elements of ``param`` this process holds (its ZeRO-3 partition, its FSDP2 shard), writable in place."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor.data
    if hasattr(param, "to_local"):
        return param.to_local().data
    return param.data


def refused_nonfinite_save(trainer, target: str) -> dict:
    """Put a NaN into one process's shard of parameter ``target`` (the last process holding elements of it: FSDP2
    puts all of a 1-row value head on process 0), and ask for a checkpoint (step 5, one no run writes): every process
    must refuse, naming ``target``, and write nothing. The NaN is removed afterwards."""
    param = named_parameters(trainer)[target]
    local = local_elements(param).view(-1)
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.numel()]))
    poisoned = dist.get_rank() == max(rank for rank, size in enumerate(sizes) if size.item() > 0)
    kept = local[0].clone() if poisoned else None
    if poisoned:
        local[0] = float("nan")
    step, trainer.state.global_step = trainer.state.global_step, 5
    try:
        trainer._save_checkpoint(trainer.model, None)
        refusal = None
    except FloatingPointError as err:
        refusal = str(err)
    finally:
        trainer.state.global_step = step
        if poisoned:
            local[0] = kept
    return {"poisoned": poisoned, "refusal": refusal}


def vllm_sync(trainer) -> dict[str, torch.Tensor]:
    """What TRL's vLLM weight sync would push (``VLLMGeneration._iter_named_params``, with reft-trl's filter, as the
    trainer installs it), without vLLM: every process walks it (ZeRO-3 and FSDP2 gather each parameter collectively);
    the tensors are full ones, under the names vLLM expects."""
    from trl.distributed import DistributedBackend
    from trl.generation.vllm_generation import VLLMGeneration

    from reft_trl.models.serving import exclude_value_params_from_vllm_sync

    generation = object.__new__(VLLMGeneration)  # no vLLM engine: only the parameter walk
    generation.model = trainer.accelerator.unwrap_model(trainer.model)
    generation.accelerator = trainer.accelerator
    generation._dist = DistributedBackend(trainer.accelerator)
    exclude_value_params_from_vllm_sync(generation)
    return {name: param.detach().clone() for name, param in generation._iter_named_params()}


def install_kill(trainer, rank: int, step: int) -> None:
    """SIGKILL process ``rank`` while it writes checkpoint-``step``: after the engine's files (its shards of the
    weights and optimizer state), before its rollout state, the barrier and the completion marker."""
    if dist.get_rank() != rank:
        return
    original = trainer._rollout_state

    def dying():
        if trainer.state.global_step == step:
            print(
                f"reft_sharded: killing process {rank} while it writes checkpoint-{step}", file=sys.stderr, flush=True
            )
            os.kill(os.getpid(), signal.SIGKILL)
        return original()

    trainer._rollout_state = dying


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--reward_model", required=True)
    parser.add_argument("--value_model", default="shared")
    parser.add_argument("--trainer", choices=["reft", "online_st"], default="reft")
    parser.add_argument("--peft", action="store_true", help="train a LoRA adapter (and the value head in full)")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="as the GPU recipes train")
    parser.add_argument(
        "--kill_rank", type=int, help="this process is SIGKILLed while it writes --kill_step's checkpoint"
    )
    parser.add_argument("--kill_step", type=int)
    parser.add_argument("--resume_latest", help="resume this run folder with resume_from_checkpoint=True")
    cli = parser.parse_args()
    out = Path(cli.output_dir)
    rows = {"prompt": [f"Q: {i} + 1 = ?\nA:" for i in range(32)], "answer": [str(i + 1) for i in range(32)]}
    if cli.trainer == "online_st":
        rows["completion"] = [f" {i} + 1 = {i + 1}. The answer is {i + 1}" for i in range(32)]  # the gold CoT
    dataset = Dataset.from_dict(rows)
    settings = dict(
        max_completion_length=8,
        max_steps=4,
        use_cpu=False,  # DeepSpeed needs it off; the FSDP2-on-CPU setup (reft_trl.trainers.fsdp_cpu) sets it
        ddp_backend="gloo",
        seed=0,
        save_strategy="steps",
        save_steps=2,
        gradient_checkpointing=cli.gradient_checkpointing,
    )

    def make_trainer(run: str | Path) -> ReFTTrainer | OnlineSTTrainer:
        if cli.trainer == "online_st":
            args = OnlineSTConfig(**cpu_trainer_settings(out / run, **settings))
            return OnlineSTTrainer(
                model=cli.model, reward_funcs=[reward, cli.reward_model], args=args, train_dataset=dataset
            )
        args = ReFTConfig(
            **cpu_trainer_settings(
                out / run,
                **settings,
                kl_coef=0.05,
                value_model=cli.value_model,
                # the separate critic starts from the reward model (its score layer as the value head), as TRL
                # 1.12's examples did: under ZeRO-3 its weights are partitioned as they load
                value_model_path=cli.reward_model if cli.value_model == "separate" else None,
            )
        )
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0) if cli.peft else None
        # the reward model by path (TRL loads and prepares it), or, beside a separate critic, as reft-trl's
        # RewardModel (loaded here, under ZeRO-3 partitioned as it loads, then prepared by the trainer)
        rm = RewardModel(cli.reward_model) if cli.value_model == "separate" else cli.reward_model
        return ReFTTrainer(
            model=cli.model,
            reward_funcs=[reward, rm],
            args=args,
            train_dataset=dataset,
            peft_config=lora,
        )

    if cli.kill_step is not None:  # a run that dies in the middle of a checkpoint: nothing after it
        trainer = make_trainer("run")
        install_kill(trainer, cli.kill_rank, cli.kill_step)
        trainer.train()
        raise SystemExit(f"process {dist.get_rank()} was not killed at checkpoint-{cli.kill_step}")

    trainer = make_trainer("run")
    before = gathered_weights(trainer)
    sizes = []
    original = trainer._calculate_rewards

    def recording(inputs, prompts, completions, completion_ids_list):
        rewards = original(inputs, prompts, completions, completion_ids_list)
        sizes.append(rewards.shape[0])
        return rewards

    trainer._calculate_rewards = recording
    trainer.train()
    shards = local_shards(trainer)
    after = gathered_weights(trainer)
    sent = vllm_sync(trainer)
    trainer.save_model(str(out / "final"))
    held = torch.tensor([sum(local for local, _, _ in shards.values()) / sum(full for _, full, _ in shards.values())])
    held = [torch.zeros_like(held) for _ in range(dist.get_world_size())], held
    dist.all_gather(*held)
    held = torch.cat(held[0]).tolist()
    mine = flat(after)
    both = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(both, mine)
    engine = "deepspeed" if trainer.is_deepspeed_enabled else "fsdp" if trainer.is_fsdp_enabled else "none"
    log_keys = sorted({k for entry in trainer.state.log_history for k in entry})
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    log_history, reward_calls = trainer.state.log_history, list(REWARD_CALLS)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    checkpointing = getattr(policy, "get_base_model", lambda: policy)().is_gradient_checkpointing
    del trainer

    if cli.resume_latest:  # the newest complete checkpoint of a run killed while writing a later one
        resumed = make_trainer(Path(cli.resume_latest))
        resumed.train(resume_from_checkpoint=True)
    else:
        resumed = make_trainer("resumed")
        resumed.train(resume_from_checkpoint=str(out / "run" / "checkpoint-2"))
    after_resume = gathered_weights(resumed)
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]

    value_prefix = {"separate": "critic.", "shared": "v_head."}[cli.value_model] if cli.trainer == "reft" else None
    # a weight of the value function (ZeRO-3 left it unchecked: 0-element placeholders), or of the trunk
    target = next(n for n in after if n.startswith(value_prefix or "model.layers.") and n.endswith("weight"))
    nonfinite = refused_nonfinite_save(resumed, target)
    run_dir = Path(resumed.args.output_dir)
    nonfinite["checkpoint_written"] = (run_dir / "checkpoint-5").exists()
    (out / f"rank-{dist.get_rank()}.json").write_text(
        json.dumps({"log_history": log_history, "reward_calls": reward_calls, "nonfinite": nonfinite})
    )

    if dist.get_rank() == 0:
        # the folders are checked by the test, in a process of its own: here transformers would load them as
        # ZeRO-3 partitions (its DeepSpeed config is global)
        save_file({n: t.contiguous() for n, t in after.items()}, str(out / "trained.safetensors"))
        result = {
            "world_size": dist.get_world_size(),
            "engine": engine,
            # the fraction of all parameter elements each process holds (0.5 when all is split in 2)
            "held_fraction": [float(f) for f in held],
            "all_params_sharded": all(managed for _, _, managed in shards.values()),
            "value_function_sharded": value_prefix is not None
            and any(value_prefix in n for n in shards)
            and all(managed for n, (_, _, managed) in shards.items() if value_prefix in n),
            "value_changed": value_prefix is not None
            and any(not torch.equal(before[n], after[n]) for n in after if n.startswith(value_prefix)),
            "trunk_changed": any(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.layers")),
            # under PEFT: the adapter changed, the base model's weights did not
            "adapter_changed": any(not torch.equal(before[n], after[n]) for n in before if ".lora_" in n),
            "base_frozen": all(
                torch.equal(before[n], after[n]) for n in before if ".lora_" not in n and "v_head" not in n
            ),
            "replicas_identical": all(torch.equal(both[0], g) for g in both[1:]),
            "resume_exact": after.keys() == after_resume.keys()
            and all(torch.equal(after[n], after_resume[n]) for n in after),
            "resume_mismatch": sorted(
                n for n in after if n in after_resume and not torch.equal(after[n], after_resume[n])
            ),
            "losses": losses,
            "resumed_losses": resumed_losses,
            "completions_per_rollout": sizes[0],
            "log_keys": log_keys,
            "nonfinite_target": target,
            "gradient_checkpointing": checkpointing,
            # the vLLM weight sync: the names it pushes, and whether each tensor is the trained one (without PEFT;
            # with it, the adapter is merged into the pushed weights)
            "vllm_sync_names": sorted(sent),
            "vllm_sync_exact": all(n in after and torch.equal(t, after[n]) for n, t in sent.items()),
        }
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    resumed.accelerator.end_training()


if __name__ == "__main__":
    import faulthandler

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a hung process is
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
