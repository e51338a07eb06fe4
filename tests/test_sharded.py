"""Sharded engines: DeepSpeed ZeRO-3 and FSDP2, each with 2 CPU processes over gloo (recipes/accelerate/*_cpu.yaml),
with the shared value head and a separate critic; the FSDP2-on-CPU setup (reft_trl.trainers.fsdp_cpu); the memory
arithmetic of the README's engine table (reft_trl.models.memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_deployable
from safetensors.torch import load_file

from reft_trl.models import memory
from reft_trl.models.value_model import attach_value_function
from reft_trl.trainers import fsdp_cpu

SCRIPT = Path(__file__).parent / "distributed" / "reft_sharded.py"
CONFIGS = REPO_ROOT / "recipes" / "accelerate"


# ------------------------------------------------------------------------------------------------ memory table
def test_memory_per_gpu_matches_hand_arithmetic():
    # 8e9 policy parameters, hidden 4096, 8 GPUs, 16 bytes per trained parameter + a 2-byte reference
    p, h, n = 8_000_000_000, 4096, 8
    head = p + h + 1
    ddp = memory.memory_per_gpu(p, engine="ddp", num_gpus=n, hidden_size=h)
    assert (ddp.parameters, ddp.gradients, ddp.optimizer, ddp.reference) == (2 * head, 2 * head, 12 * head, 2 * p)
    zero2 = memory.memory_per_gpu(p, engine="zero2", num_gpus=n, hidden_size=h)
    assert (zero2.parameters, zero2.gradients, zero2.optimizer, zero2.reference) == (
        2 * head, 2 * head / 8, 12 * head / 8, 2 * p,
    )  # fmt: skip
    zero3 = memory.memory_per_gpu(p, engine="zero3", num_gpus=n, hidden_size=h)
    assert zero3.total == 16 * head / 8 + 2 * p / 8
    fsdp2 = memory.memory_per_gpu(p, engine="fsdp2", num_gpus=n, hidden_size=h)
    assert (fsdp2.parameters, fsdp2.gradients, fsdp2.optimizer) == (4 * head / 8, 4 * head / 8, 8 * head / 8)
    assert fsdp2.total == zero3.total  # 16 bytes per parameter either way, split differently
    # a separate critic as large as the policy doubles what is trained, not the reference
    critic = memory.memory_per_gpu(p, engine="zero3", num_gpus=n, value_model="separate")
    assert critic.total == 16 * 2 * p / 8 + 2 * p / 8
    smaller = memory.memory_per_gpu(p, engine="ddp", num_gpus=1, value_model="separate", critic_params=10)
    assert smaller.total == 16 * (p + 10) + 2 * p
    assert memory.memory_per_gpu(p, engine="ddp", num_gpus=1, reference=False).reference == 0
    # 7B with a shared head on 8 GPUs: ZeRO-2 keeps 2 + 14/8 bytes per parameter + the 2-byte reference
    assert memory.memory_per_gpu(7e9, engine="zero2", num_gpus=8).total == pytest.approx(
        7e9 * (2 + 14 / 8 + 2) + 17.75
    )


def test_memory_per_gpu_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match="engine must be one of"):
        memory.memory_per_gpu(1, engine="zero1", num_gpus=8)
    with pytest.raises(ValueError, match="value_model"):
        memory.memory_per_gpu(1, engine="ddp", num_gpus=8, value_model="both")
    with pytest.raises(ValueError, match="num_gpus"):
        memory.memory_per_gpu(1, engine="ddp", num_gpus=0)


def test_the_docs_engine_table_is_the_functions_output():
    text = (REPO_ROOT / "docs" / "recipes.md").read_text()
    assert memory.memory_table() in text, (
        "regenerate it: python -c 'from reft_trl.models import memory; print(memory.memory_table())'"
    )


# -------------------------------------------------------------------------------------------- FSDP2 on CPU
def test_cpu_fsdp_launch_is_recognised_only_for_a_multi_process_fsdp_launch(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not fsdp_cpu.cpu_fsdp_launch()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fsdp_cpu.fsdp_launch() and not fsdp_cpu.cpu_fsdp_launch()  # one process: nothing to shard over
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert fsdp_cpu.cpu_fsdp_launch() == (not torch.cuda.is_available())


def test_fsdp1_on_cpu_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP version 1 on CPU processes is not supported"):
        fsdp_cpu.set_up_cpu_fsdp_state()


def test_keep_configured_state_keeps_the_users_accelerator_settings(tmp_path):
    from transformers.trainer_pt_utils import AcceleratorConfig

    assert fsdp_cpu.keep_configured_state(None) == {"use_configured_state": True}
    assert fsdp_cpu.keep_configured_state({"split_batches": True}) == {
        "split_batches": True,
        "use_configured_state": True,
    }
    path = tmp_path / "accelerator.json"
    path.write_text(json.dumps({"even_batches": False}))
    assert fsdp_cpu.keep_configured_state(str(path)) == {"even_batches": False, "use_configured_state": True}
    assert fsdp_cpu.keep_configured_state(AcceleratorConfig()).use_configured_state


def test_an_fsdp_launch_that_accelerate_did_not_set_up_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """One process with ACCELERATE_USE_FSDP (no process group to shard over): accelerate sets up no FSDP, and the
    trainer says so instead of training unsharded."""
    from conftest import cpu_trainer_settings
    from datasets import Dataset

    from reft_trl.trainers import ReFTConfig, ReFTTrainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    args = ReFTConfig(**cpu_trainer_settings(tmp_path))
    data = Dataset.from_dict({"prompt": ["Q: 1 + 1 = ?\nA:"] * 8, "answer": ["2"] * 8})
    with pytest.raises(ValueError, match="launched for FSDP.*would train unsharded"):
        ReFTTrainer(model=tiny_checkpoint, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                    train_dataset=data)  # fmt: skip


# ----------------------------------------------------------------------------------- 2-process sharded runs
RUNS = {  # (accelerate config, value_model) -> port
    ("zero3_cpu.yaml", "shared"): 29531,
    ("zero3_cpu.yaml", "separate"): 29532,
    ("fsdp2_cpu.yaml", "shared"): 29533,
    ("fsdp2_cpu.yaml", "separate"): 29534,
}


@pytest.fixture(scope="module")
def reward_model(tiny_checkpoint, tmp_path_factory) -> str:
    from test_reward_models import save_classifier
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("sharded-rm") / "rm"
    save_classifier(path, AutoTokenizer.from_pretrained(tiny_checkpoint), seed=1)
    return str(path)


@pytest.fixture(scope="module", params=list(RUNS), ids=lambda r: f"{r[0].removesuffix('_cpu.yaml')}-{r[1]}")
def sharded_run(request, tiny_checkpoint, reward_model, tmp_path_factory):
    """One launch per engine and value function: 4 steps uninterrupted, then resumed from checkpoint-2 (~15-25 s)."""
    if request.param[0].startswith("zero3"):
        pytest.importorskip("deepspeed")
    config, value_model = request.param
    out = tmp_path_factory.mktemp(f"sharded-{config.removesuffix('.yaml')}-{value_model}")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
        "--main_process_port", str(RUNS[request.param]), str(SCRIPT), "--model", tiny_checkpoint,
        "--output_dir", str(out), "--reward_model", reward_model, "--value_model", value_model,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    return config, value_model, out, json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_sharded_training_shards_and_updates_the_head_and_the_trunk(sharded_run):
    config, value_model, _, result = sharded_run
    assert result["world_size"] == 2
    assert result["engine"] == ("deepspeed" if config.startswith("zero3") else "fsdp")
    # every parameter is partitioned by the engine, each process holding half of the elements (ZeRO-3 pads)
    assert result["all_params_sharded"] and result["value_function_sharded"]
    assert all(0.49 < f < 0.51 for f in result["held_fraction"]), result["held_fraction"]
    assert result["value_changed"] and result["trunk_changed"]
    assert result["replicas_identical"]  # both processes gather the same full weights
    assert result["completions_per_rollout"] == 8  # 4 per process, the scores gathered from both
    assert {"objective/kl", "loss/value", "value/explained_variance", "rewards/rm/mean"} <= set(result["log_keys"])


@pytest.mark.slow
def test_sharded_resume_from_a_checkpoint_ends_with_the_uninterrupted_weights(sharded_run):
    _, _, _, result = sharded_run
    assert result["resume_exact"]
    assert result["resumed_losses"] == result["losses"]


@pytest.mark.slow
def test_sharded_final_folder_and_checkpoint_are_plain_gathered_folders(sharded_run):
    _, value_model, out, _ = sharded_run
    trained = load_file(out / "trained.safetensors")
    for folder in (out / "final", out / "run" / "checkpoint-4"):
        model = assert_deployable(folder, value_model=value_model)  # loadable on one process, nothing extra
        assert all(torch.equal(p, trained[n]) for n, p in model.state_dict().items())
        assert attach_value_function(model, str(folder), value_model=value_model) == value_model
        value = {n: p for n, p in model.named_parameters() if n.split(".")[0] in ("v_head", "critic")}
        assert value and value.keys() == {n for n in trained if n.split(".")[0] in ("v_head", "critic")}
        assert all(torch.equal(p, trained[n]) for n, p in value.items())
