"""Time per PPO iteration and peak memory: ReFT (shared-trunk value head) vs a separate critic vs TRL's GRPOTrainer
vs a critic-free ReFTTrainer (REINFORCE++).

Four configurations on the same freshly initialised model, the same number of completions per iteration, the same
prompt and completion lengths and the same optimisation schedule:

* ``reft``          (a) ``ReFTTrainer`` with the value head on the policy's trunk (the paper's method);
* ``reft-separate`` (b) ``ReFTTrainer(value_model="separate")``: a critic with its own trunk (the paper's ablation);
* ``grpo``          (c) ``trl.GRPOTrainer``: B/2 prompts x 2 generations where ReFT samples B prompts x 1;
* ``reinforce-pp``  (d) ``ReFTTrainer(advantage_estimator="reinforce_plus_plus")``: no critic at all.

One *iteration* = one rollout (generation, reward, no-grad policy forward for the old log-probs (+ values), reference
forward, advantages) + ``epochs`` x ``B / micro_batch`` optimizer steps (one per micro-batch). It is timed from the
start of ``_generate_and_score_completions`` to the end of the iteration's last optimizer step (``on_step_end``),
split into generation, the rest of the rollout, and the update.

Each configuration runs in its own fresh process (so that its peak memory is its own); the parent lets exactly one of
them run one iteration at a time, rotating the order every round, so that the three share the machine's noise. The
first ``--warmup`` iterations are discarded; medians and p10-p90 are reported, and the ratios a/b and a/c both as a
ratio of medians and as the median of per-round ratios (adjacent in time, hence paired).

Generation is fixed-length (``min_new_tokens = max_completion_length``: EOS cannot be sampled before the limit), the
prompts all have the same token length and the reward is a cheap deterministic function of the text, so differences
come from the trainers. Nothing is downloaded: the model (Llama architecture) and the tokenizer are built in-process
and saved to a temporary directory (TRL reloads the reference model from the policy's path).

Usage::

    python benchmarks/ppo_step.py --preset cpu              # ~30M params, a few s/iteration on 2 cores
    python benchmarks/ppo_step.py --preset gpu-0.5b         # ~0.5B params, bf16, on an H100/H200
    python benchmarks/ppo_step.py --preset tiny --out /tmp/t.json   # the smoke test's configuration
    python benchmarks/ppo_step.py --preset gpu-0.5b --device cpu --hidden-size 64 --layers 2 --heads 4 \\
        --kv-heads 2 --intermediate-size 128 --vocab-size 512 --batch 4 --micro-batch 2 --prompt-len 8 \\
        --completion-len 8 --iterations 2 --warmup 1        # the GPU preset's code path, shrunk to run on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    fmt_bytes,
    fmt_count,
    hardware_info,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    summarize,
)

CONFIGS = {
    "reft": "(a) ReFT, shared-trunk value head",
    "reft-separate": "(b) ReFT, separate critic (ablation)",
    "grpo": "(c) TRL GRPOTrainer",
    "reinforce-pp": "(d) ReFT, REINFORCE++ (no critic)",
}
TARGETS = {"a/b time": 0.6, "a/b memory": 0.6, "a/c time": 1.3}
# ratio -> (numerator, denominator); those without a TARGETS entry are reported, not judged.
RATIOS = {
    "a/b": ("reft", "reft-separate"),
    "a/c": ("reft", "grpo"),
    "d/a": ("reinforce-pp", "reft"),
    "d/c": ("reinforce-pp", "grpo"),
}

PRESETS = {
    # A few seconds for the whole benchmark: the smoke test.
    "tiny": dict(
        hidden_size=32,
        layers=2,
        heads=4,
        kv_heads=4,
        intermediate_size=64,
        vocab_size=128,
        tie_embeddings=False,
        batch=4,
        micro_batch=2,
        prompt_len=8,
        completion_len=8,
        epochs=2,
        iterations=3,
        warmup=1,
        bf16=False,
    ),
    # ~30M parameters (hidden 512, 8 layers, vocab 4096): a few seconds per iteration on 2 shared CPU cores.
    "cpu": dict(
        hidden_size=512,
        layers=8,
        heads=8,
        kv_heads=8,
        intermediate_size=1376,
        vocab_size=4096,
        tie_embeddings=False,
        batch=8,
        micro_batch=4,
        prompt_len=16,
        completion_len=16,
        epochs=2,
        iterations=10,
        warmup=2,
        bf16=False,
        # One intra-op thread: on a shared, oversubscribed 2-core machine, OpenMP's barrier waits on preempted
        # threads and 2 threads ran 2-3x *slower* than 1 (and far noisier). Use --threads 2 on a quiet machine.
        threads=1,
    ),
    # Qwen2.5-0.5B-like dimensions (494M parameters: hidden 896, 24 layers, GQA 14/2, vocab 151936, tied
    # embeddings), built from scratch in bf16; ReFT-like lengths (the paper: 300-token answers).
    "gpu-0.5b": dict(
        hidden_size=896,
        layers=24,
        heads=14,
        kv_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        tie_embeddings=True,
        batch=64,
        micro_batch=16,
        prompt_len=128,
        completion_len=256,
        epochs=2,
        iterations=8,  # 3 x 10 iterations of ~10-15 s: fits a 10-minute slot
        warmup=2,
        bf16=True,
    ),
}


# ================================================================================================ model and data
def build_checkpoint(spec: dict, path: str) -> int:
    """Build the Llama model + tokenizer from ``spec`` and save them to ``path``; returns the parameter count.

    The tokenizer is character-level (prompts encode to exactly one token per character) padded with filler tokens
    to ``vocab_size``: a randomly initialised model samples anywhere in the vocabulary and the fillers decode to
    ``<x123>``, so the output layer has a realistic size without a download.
    """
    import torch
    import transformers

    from reft_trl.models.tiny import char_tokenizer, save_tiny_llama

    transformers.logging.disable_progress_bar()
    model = save_tiny_llama(
        path,
        char_tokenizer(vocab_size=spec["vocab_size"]),
        dtype=torch.bfloat16 if spec["bf16"] else torch.float32,
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        intermediate_size=spec["intermediate_size"],
        max_position_embeddings=max(2048, spec["prompt_len"] + spec["completion_len"]),
        tie_word_embeddings=spec["tie_embeddings"],
        seed=spec["seed"],
    )
    return sum(p.numel() for p in model.parameters())


def build_dataset(spec: dict, rows: int):
    """``rows`` prompts of exactly ``prompt_len`` characters (= tokens), reproducible from the seed."""
    import random
    import string

    from datasets import Dataset

    rng = random.Random(spec["seed"])
    alphabet = string.ascii_lowercase + string.digits + " +-="
    return Dataset.from_dict({"prompt": ["".join(rng.choices(alphabet, k=spec["prompt_len"])) for _ in range(rows)]})


def checksum_reward(completions, **kwargs) -> list[float]:
    """A cheap deterministic reward in [0, 1] that varies between completions (no sandbox, no parsing)."""
    return [(sum(map(ord, c if isinstance(c, str) else str(c))) % 97) / 96 for c in completions]


# ========================================================================================================= worker
def _sync(cuda: bool) -> float:
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def build_trainer(name: str, spec: dict, dataset, output_dir: str):
    """The trainer of configuration ``name``, with every setting that matters shared by the three configurations."""
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from reft_trl.trainers import ReFTConfig, ReFTTrainer

    spg = spec["batch"] // spec["micro_batch"]
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=spec["micro_batch"],  # completions per micro-batch (= per optimizer step)
        steps_per_generation=spg,
        gradient_accumulation_steps=1,
        num_iterations=spec["epochs"],
        max_completion_length=spec["completion_len"],
        generation_kwargs={"min_new_tokens": spec["completion_len"]},  # fixed-length generation
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=spec["beta"],
        epsilon=0.2,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        max_steps=(spec["warmup"] + spec["iterations"]) * spec["epochs"] * spg,
        model_init_kwargs={"dtype": "bfloat16" if spec["bf16"] else "float32"},
        bf16=spec["bf16"],
        gradient_checkpointing=spec["gradient_checkpointing"],
        use_cpu=spec["device"] == "cpu",
        disable_dropout=True,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=spec["seed"],
    )
    tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"])
    if name == "grpo":
        args = GRPOConfig(num_generations=2, **common)
        cls = GRPOTrainer
    else:
        args = ReFTConfig(
            num_generations=1,
            value_model="separate" if name == "reft-separate" else "shared",
            advantage_estimator="reinforce_plus_plus" if name == "reinforce-pp" else "gae",
            **common,
        )
        cls = ReFTTrainer
    return cls(
        model=spec["checkpoint"],
        reward_funcs=checksum_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )


class _ForwardCounter:
    """Counts the sequences each trunk processes outside generation, with and without grad (per iteration)."""

    def __init__(self):
        self.in_generation = False
        self.counts: dict[str, int] = {}

    def attach(self, label: str, module) -> None:
        def hook(mod, args, output):
            if self.in_generation:
                return
            import torch

            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            key = f"{label}/{'grad' if torch.is_grad_enabled() else 'no_grad'}"
            self.counts[key] = self.counts.get(key, 0) + int(hidden.shape[0])

        module.register_forward_hook(hook)

    def pop(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return dict(sorted(counts.items()))


def _param_counts(trainer) -> dict:
    from reft_trl.models.value_head import unwrap_causal_lm
    from reft_trl.models.value_model import is_value_param

    named = list(unwrap_causal_lm(trainer.model).named_parameters())
    ref = list(trainer.ref_model.parameters()) if trainer.ref_model is not None else []
    return {
        "policy": sum(p.numel() for n, p in named if not is_value_param(n)),
        "value": sum(p.numel() for n, p in named if is_value_param(n)),  # v_head, or the separate critic + its head
        "trainable": sum(p.numel() for _, p in named if p.requires_grad),
        "reference": sum(p.numel() for p in ref),
    }


def _static_tensor_bytes(trainer) -> dict:
    """Bytes of parameters (all models), gradients (one per trainable parameter) and optimizer state."""
    params = list(trainer.model.parameters())
    ref = list(trainer.ref_model.parameters()) if trainer.ref_model is not None else []
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state = [t for s in optimizer.state.values() for t in s.values() if hasattr(t, "element_size") and t.dim() > 0]
    out = {
        "parameters": _tensor_bytes(params) + _tensor_bytes(ref),
        "gradients": _tensor_bytes(p for p in params if p.requires_grad),
        "optimizer_state": _tensor_bytes(state),
    }
    out["total"] = sum(out.values())
    return out


def _worker(name: str, spec: dict, conn) -> None:
    try:
        with tempfile.TemporaryDirectory(prefix=f"ppo_step_{name}_") as output_dir:
            _run_worker(name, spec, conn, output_dir)
    except BaseException as exc:  # report to the parent, which stops the others
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


def _run_worker(name: str, spec: dict, conn, output_dir: str) -> None:
    import gc
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    from transformers import PrinterCallback, TrainerCallback

    from reft_trl.models.critic import critic_of, has_critic
    from reft_trl.models.value_head import unwrap_causal_lm

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    steps_per_iteration = spec["epochs"] * (spec["batch"] // spec["micro_batch"])
    dataset = build_dataset(spec, rows=max(64, 4 * spec["batch"]))

    # Baseline: interpreter, libraries and data loaded, no model yet. The libraries include those the trainers import
    # lazily while they are built (~30 MiB, which would otherwise count as training memory of every configuration):
    # trl's trainer modules, and deepspeed, which accelerate imports in `extract_model_from_parallel` when installed.
    import trl.trainer.grpo_trainer  # noqa: F401
    from accelerate.utils import extract_model_from_parallel

    import reft_trl.trainers  # noqa: F401

    extract_model_from_parallel(torch.nn.Linear(1, 1))
    gc.collect()
    if cuda:
        torch.cuda.init()
        torch.cuda.synchronize()
    baseline_rss = rss_bytes()
    baseline_modules = set(sys.modules)
    baseline_cuda = torch.cuda.memory_allocated() if cuda else 0

    trainer = build_trainer(name, spec, dataset, output_dir)

    gc.collect()
    init_rss = rss_bytes()
    hwm_reset = reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        init_cuda = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

    # ---- instrumentation: rollout (and generation inside it) timed by wrapping the instance's methods, the end of
    # the iteration by a callback after its last optimizer step; trunk forwards counted by hooks.
    counter = _ForwardCounter()
    causal_lm = unwrap_causal_lm(trainer.model)
    counter.attach("policy", causal_lm.base_model)
    if has_critic(causal_lm):
        counter.attach("critic", critic_of(causal_lm).backbone)
    if trainer.ref_model is not None:
        counter.attach("reference", trainer.ref_model.base_model)

    record: dict = {}
    rollout, generate = trainer._generate_and_score_completions, trainer._generate

    def timed_rollout(inputs):
        if not trainer.model.training:
            return rollout(inputs)
        command = conn.recv()  # wait for our turn: only one configuration runs at a time
        if command != "go":
            raise SystemExit(f"stopped by the parent ({command!r})")
        counter.pop()
        record.clear()
        record["generation_s"] = 0.0
        record["start"] = _sync(cuda)
        batch = rollout(inputs)
        record["rollout_end"] = _sync(cuda)
        mask = batch["completion_mask"]
        record["completions"] = int(mask.size(0))
        record["completion_tokens_mean"] = float(mask.sum(1).float().mean())
        record["prompt_tokens_mean"] = float(batch["prompt_mask"].sum(1).float().mean())
        return batch

    def timed_generate(*args, **kwargs):
        start = _sync(cuda)
        counter.in_generation = True
        try:
            return generate(*args, **kwargs)
        finally:
            counter.in_generation = False
            record["generation_s"] = record.get("generation_s", 0.0) + _sync(cuda) - start

    trainer._generate_and_score_completions = timed_rollout
    trainer._generate = timed_generate

    class IterationEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % steps_per_iteration:
                return
            end = _sync(cuda)
            conn.send(
                (
                    "iteration",
                    {
                        "iteration_s": end - record["start"],
                        "rollout_s": record["rollout_end"] - record["start"],
                        "generation_s": record["generation_s"],
                        "update_s": end - record["rollout_end"],
                        "completions": record["completions"],
                        "completion_tokens_mean": record["completion_tokens_mean"],
                        "prompt_tokens_mean": record["prompt_tokens_mean"],
                        "sequence_forwards": counter.pop(),
                    },
                )
            )

    trainer.add_callback(IterationEnd())
    trainer.remove_callback(PrinterCallback)  # prints the end-of-training summary even with logging off
    conn.send(
        ("ready", {"params": _param_counts(trainer), "pid": os.getpid(), "torch_threads": torch.get_num_threads()})
    )
    trainer.train()

    memory = {
        "rss_baseline_bytes": baseline_rss,
        "rss_growth_after_init_bytes": init_rss - baseline_rss,
        "rss_peak_growth_bytes": peak_rss_bytes() - baseline_rss,
        "rss_peak_reset_after_init": hwm_reset,
        # Packages that still got imported after the baseline (their memory counts as the trainer's).
        "packages_imported_after_baseline": sorted({m.split(".")[0] for m in set(sys.modules) - baseline_modules}),
        "static_tensor_bytes": _static_tensor_bytes(trainer),
    }
    if cuda:
        memory.update(
            cuda_baseline_bytes=baseline_cuda,
            cuda_after_init_bytes=init_cuda,
            cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(),
            cuda_max_reserved_bytes=torch.cuda.max_memory_reserved(),
        )
    conn.send(("done", {"memory": memory}))


# ========================================================================================================= parent
def _recv(conn, proc, name: str, timeout: float):
    deadline = time.monotonic() + timeout
    while not conn.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"worker {name!r} exited with code {proc.exitcode} (see its traceback above)")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {name!r} sent nothing for {timeout:.0f} s")
    kind, payload = conn.recv()
    if kind == "error":
        raise RuntimeError(f"worker failed:\n{payload}")
    return kind, payload


def run(spec: dict) -> dict:
    """Start one worker per configuration, interleave their iterations, and collect the raw measurements."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    ctx = mp.get_context("spawn")  # fresh interpreters: each configuration's memory is its own
    workers = {}
    for name in spec["configs"]:
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(name, spec, child_conn), name=f"ppo_step-{name}")
        proc.start()
        workers[name] = (proc, parent_conn)
    raw = {name: {"iterations": []} for name in spec["configs"]}
    try:
        for name, (proc, conn) in workers.items():
            _, info = _recv(conn, proc, name, spec["timeout"])
            raw[name].update(info)
        rounds = spec["warmup"] + spec["iterations"]
        names = list(spec["configs"])
        with tqdm(total=rounds * len(names), desc="PPO iterations", unit="it", file=sys.stderr) as bar:
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no configuration always first
                for name in order:
                    proc, conn = workers[name]
                    conn.send("go")
                    _, it = _recv(conn, proc, name, spec["timeout"])
                    it["round"], it["warmup"] = r, r < spec["warmup"]
                    raw[name]["iterations"].append(it)
                    bar.set_postfix_str(f"{name} {it['iteration_s']:.2f}s{' (warm-up)' if it['warmup'] else ''}")
                    bar.update()
        for name, (proc, conn) in workers.items():
            _, done = _recv(conn, proc, name, spec["timeout"])
            raw[name].update(done)
            proc.join(timeout=60)
    finally:
        for proc, conn in workers.values():
            if proc.is_alive():
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send("stop")
                proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
    return raw


def _peak(result: dict, cuda: bool) -> int:
    memory = result["memory"]
    return memory["cuda_max_allocated_bytes"] if cuda else memory["rss_peak_growth_bytes"]


def analyse(spec: dict, raw: dict, hardware: dict) -> dict:
    cuda = spec["device"] == "cuda"
    configs = {}
    for name, result in raw.items():
        measured = [it for it in result["iterations"] if not it["warmup"]]
        configs[name] = {
            "label": CONFIGS[name],
            "params": result["params"],
            "torch_threads": result["torch_threads"],
            "iteration_s": summarize([it["iteration_s"] for it in measured]),
            "rollout_s": summarize([it["rollout_s"] for it in measured]),
            "generation_s": summarize([it["generation_s"] for it in measured]),
            "rollout_without_generation_s": summarize([it["rollout_s"] - it["generation_s"] for it in measured]),
            "iteration_without_generation_s": summarize([it["iteration_s"] - it["generation_s"] for it in measured]),
            "update_s": summarize([it["update_s"] for it in measured]),
            "completions_per_iteration": measured[-1]["completions"],
            "completion_tokens_mean": summarize([it["completion_tokens_mean"] for it in measured])["median"],
            "prompt_tokens_mean": summarize([it["prompt_tokens_mean"] for it in measured])["median"],
            "sequence_forwards_per_iteration": measured[-1]["sequence_forwards"],
            "peak_memory_bytes": _peak(result, cuda),
            "memory": result["memory"],
            "warmup_iteration_s": [it["iteration_s"] for it in result["iterations"] if it["warmup"]],
        }

    ratios = {}
    for key, (num, den) in RATIOS.items():
        if num not in configs or den not in configs:
            continue
        per_round = [
            a["iteration_s"] / b["iteration_s"]
            for a, b in zip(raw[num]["iterations"], raw[den]["iterations"])
            if not a["warmup"]
        ]
        entry = {
            "numerator": num,
            "denominator": den,
            "time_ratio_of_medians": configs[num]["iteration_s"]["median"] / configs[den]["iteration_s"]["median"],
            "time_paired": summarize(per_round),
            "rollout_ratio_of_medians": configs[num]["rollout_s"]["median"] / configs[den]["rollout_s"]["median"],
            "update_ratio_of_medians": configs[num]["update_s"]["median"] / configs[den]["update_s"]["median"],
            # what a critic can double: everything but generation, which the critic takes no part in
            "without_generation_ratio_of_medians": configs[num]["iteration_without_generation_s"]["median"]
            / configs[den]["iteration_without_generation_s"]["median"],
            "numerator_generation_share": configs[num]["generation_s"]["median"]
            / configs[num]["iteration_s"]["median"],
            "peak_memory_ratio": configs[num]["peak_memory_bytes"] / configs[den]["peak_memory_bytes"],
            "static_tensor_ratio": configs[num]["memory"]["static_tensor_bytes"]["total"]
            / configs[den]["memory"]["static_tensor_bytes"]["total"],
        }
        if f"{key} time" in TARGETS:
            entry["time_target"] = TARGETS[f"{key} time"]
            entry["time_meets_target"] = entry["time_ratio_of_medians"] <= entry["time_target"]
        if f"{key} memory" in TARGETS:
            entry["memory_target"] = TARGETS[f"{key} memory"]
            entry["memory_meets_target"] = entry["peak_memory_ratio"] <= entry["memory_target"]
        ratios[key] = entry

    spg = spec["batch"] // spec["micro_batch"]
    matched = [
        f"model: the same checkpoint ({spec['total_params']:,} parameters, {'bf16' if spec['bf16'] else 'fp32'}), "
        "loaded from disk by each trainer; the reference model is a second copy of it in every configuration",
        f"completions per iteration: {spec['batch']} (ReFT and REINFORCE++: {spec['batch']} prompts x 1 sample; "
        f"GRPO: {spec['batch'] // 2} prompts x 2 generations)",
        f"lengths: prompts of exactly {spec['prompt_len']} tokens; completions of exactly {spec['completion_len']} "
        f"tokens (max_completion_length={spec['completion_len']}, min_new_tokens={spec['completion_len']})",
        f"optimisation: num_iterations={spec['epochs']} epochs x {spg} micro-batches of {spec['micro_batch']} "
        f"completions, gradient_accumulation_steps=1 (one optimizer step per micro-batch: {spec['epochs'] * spg} "
        "per iteration), AdamW, same learning rate",
        f"rollout forwards: beta={spec['beta']} > 0 so all compute reference log-probs; with "
        "gradient_accumulation_steps=1 < steps_per_generation x num_iterations GRPO also runs the no-grad policy "
        "forward for old log-probs, the one in which ReFT captures its values",
        "sampling: temperature 1.0, top_k 0, top_p 1.0, transformers generate (no vLLM); reward: the same cheap "
        "deterministic function of the text; gradient checkpointing "
        + ("on" if spec["gradient_checkpointing"] else "off")
        + "; logging and checkpointing off",
    ]
    if cuda:
        memory_meaning = (
            "peak memory = torch.cuda.max_memory_allocated() over the training loop (peak counter reset once the "
            "trainer was built): every live tensor on the GPU - parameters of the policy, value head or critic and "
            "reference, gradients, optimizer state, activations and temporaries. It excludes the CUDA context and "
            "the caching allocator's unused reserve (max_memory_reserved is in the JSON)."
        )
    else:
        memory_meaning = (
            "peak memory = growth of the process's peak resident set size (VmHWM, reset via /proc/self/clear_refs "
            "once the trainer was built) over its RSS just before any model was loaded, each configuration in a "
            "fresh process: parameters of the policy, value head or critic and reference, gradients, optimizer "
            "state, activations, plus allocator overhead; the interpreter and libraries are in the baseline. "
            "'static tensors' counts parameters + gradients + optimizer state exactly (no activations)."
        )
    return {
        "benchmark": "ppo_step",
        "preset": spec["preset"],
        "settings": {k: v for k, v in spec.items() if k not in ("checkpoint",)},
        "hardware": hardware,
        "matched": matched,
        "iteration_definition": (
            "one rollout (generation, reward, no-grad policy forward [+ critic], reference forward, advantages) + "
            "all optimizer steps on it; timed from the start of _generate_and_score_completions to on_step_end of the "
            "iteration's last optimizer step, synchronising the GPU at both ends"
        ),
        "memory_metric": memory_meaning,
        "configs": configs,
        "ratios": ratios,
        "targets": TARGETS,
    }


def _spread(s: dict) -> str:
    return f"{s['p10']:.3f}-{s['p90']:.3f}"


def render(report: dict) -> str:
    configs, ratios, hw = report["configs"], report["ratios"], report["hardware"]
    cuda = report["settings"]["device"] == "cuda"
    threads = sorted({c["torch_threads"] for c in configs.values()})
    lines = [
        f"## PPO iteration: time and peak memory (preset `{report['preset']}`)",
        "",
        f"Hardware: {hw['cpu_model']}, {hw['cpus_usable']} usable cores ({'/'.join(map(str, threads))} torch threads per worker), "
        f"{hw.get('gpu_name') or 'no GPU'}; torch {hw['torch']}, transformers {hw['transformers']}, trl {hw['trl']}. "
        f"Load average at start {hw['load_average']}, at end {report.get('load_average_end')}.",
        f"{report['settings']['iterations']} measured iterations per configuration after "
        f"{report['settings']['warmup']} warm-up, interleaved round-robin (order rotated every round).",
        "",
        "| config | median s/iteration | p10-p90 | rollout s (of which generation) | update s | peak memory "
        "| static tensors | trainable params (+ reference) | sequences through each trunk per iteration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs.values():
        p = c["params"]
        forwards = ", ".join(f"{k} {v}" for k, v in c["sequence_forwards_per_iteration"].items())
        lines.append(
            f"| {c['label']} | {c['iteration_s']['median']:.3f} | {_spread(c['iteration_s'])} "
            f"| {c['rollout_s']['median']:.3f} ({c['generation_s']['median']:.3f}) | {c['update_s']['median']:.3f} "
            f"| {fmt_bytes(c['peak_memory_bytes'])} | {fmt_bytes(c['memory']['static_tensor_bytes']['total'])} "
            f"| {fmt_count(p['trainable'])} (+ {fmt_count(p['reference'])}) | {forwards} |"
        )
    lines += [
        "",
        "| ratio | time: ratio of medians | time: per-round ratio, median (p10-p90) | rollout | update "
        "| time without generation | peak memory | static tensors | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in ratios.items():
        target = f"time <= {r['time_target']}" if "time_target" in r else "(none)"
        met = ("yes" if r["time_meets_target"] else "NO") if "time_target" in r else ""
        if "memory_target" in r:
            target += f", memory <= {r['memory_target']}"
            met += " / " + ("yes" if r["memory_meets_target"] else "NO")
        tp = r["time_paired"]
        lines.append(
            f"| {key} ({r['numerator']} / {r['denominator']}) | {r['time_ratio_of_medians']:.3f} "
            f"| {tp['median']:.3f} ({tp['p10']:.3f}-{tp['p90']:.3f}) | {r['rollout_ratio_of_medians']:.3f} "
            f"| {r['update_ratio_of_medians']:.3f} | {r['without_generation_ratio_of_medians']:.3f} "
            f"| {r['peak_memory_ratio']:.3f} | {r['static_tensor_ratio']:.3f} "
            f"| {target} | {met} |"
        )
    if "reft" in configs:
        share = configs["reft"]["generation_s"]["median"] / configs["reft"]["iteration_s"]["median"]
        lines += [
            "",
            f"Generation is {share:.0%} of (a)'s median iteration; no configuration's value model takes part in it, "
            "so a separate critic can at most double the rest ('time without generation').",
        ]
    lines += ["", "Matched across configurations:"] + [f"- {m}" for m in report["matched"]]
    lines += ["", f"Peak memory ({'CUDA' if cuda else 'CPU'}): {report['memory_metric']}"]
    tokens = {name: c["completion_tokens_mean"] for name, c in configs.items()}
    lines += [f"Mean completion tokens per configuration (must all equal max_completion_length): {tokens}"]
    return "\n".join(lines)


# ========================================================================================================== CLI
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/ppo_step_<preset>.json)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    size = parser.add_argument_group("model (overrides the preset)")
    size.add_argument("--hidden-size", type=int)
    size.add_argument("--layers", type=int)
    size.add_argument("--heads", type=int)
    size.add_argument("--kv-heads", type=int)
    size.add_argument("--intermediate-size", type=int)
    size.add_argument("--vocab-size", type=int)
    size.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=None)
    size.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 weights + autocast")
    run_group = parser.add_argument_group("run (overrides the preset)")
    run_group.add_argument("--batch", type=int, help="completions per iteration (B; GRPO: B/2 prompts x 2)")
    run_group.add_argument("--micro-batch", type=int, help="completions per optimizer step")
    run_group.add_argument("--prompt-len", type=int)
    run_group.add_argument("--completion-len", type=int)
    run_group.add_argument("--epochs", type=int, help="num_iterations: PPO epochs over each rollout")
    run_group.add_argument("--iterations", type=int, help="measured iterations per configuration")
    run_group.add_argument("--warmup", type=int, help="discarded warm-up iterations per configuration")
    run_group.add_argument("--beta", type=float, default=0.05, help="KL coefficient (> 0: reference forward)")
    run_group.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    run_group.add_argument("--threads", type=int, help="torch threads per worker (0: torch's default; preset cpu: 1)")
    run_group.add_argument("--seed", type=int, default=0)
    run_group.add_argument("--timeout", type=float, default=1800, help="seconds without news before giving up")
    return parser.parse_args(argv)


def resolve_spec(args: argparse.Namespace) -> dict:
    spec = dict(threads=0) | PRESETS[args.preset]
    for key in spec:
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if args.device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown or not configs:
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; choose among {list(CONFIGS)}")
    if spec["batch"] % spec["micro_batch"] or spec["batch"] % 2 or spec["micro_batch"] % 2:
        raise SystemExit("--batch must be a multiple of --micro-batch, both even (GRPO groups of 2 completions)")
    if spec["iterations"] < 1 or spec["warmup"] < 0 or args.beta <= 0:
        raise SystemExit("--iterations >= 1, --warmup >= 0 and --beta > 0 are required")
    spec.update(
        preset=args.preset,
        device=device,
        configs=configs,
        beta=args.beta,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        timeout=args.timeout,
    )
    return spec


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse_args(argv)
    spec = resolve_spec(args)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"ppo_step_{spec['preset']}.json")
    hardware = hardware_info()
    with tempfile.TemporaryDirectory(prefix="ppo_step_model_") as checkpoint:
        print(f"[ppo_step] building the {spec['preset']} model in {checkpoint} ...", file=sys.stderr, flush=True)
        spec["checkpoint"] = checkpoint
        spec["total_params"] = build_checkpoint(spec, checkpoint)
        print(
            f"[ppo_step] {spec['total_params']:,} parameters; starting {len(spec['configs'])} workers on "
            f"{spec['device']} ({spec['warmup']} warm-up + {spec['iterations']} measured iterations each)",
            file=sys.stderr,
            flush=True,
        )
        raw = run(spec)
    report = analyse(spec, raw, hardware)
    report["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["raw_iterations"] = {name: r["iterations"] for name, r in raw.items()}
    text = render(report)
    report["markdown"] = text
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n[ppo_step] wrote {out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
