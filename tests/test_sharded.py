"""Sharded engines: DeepSpeed ZeRO-3 and FSDP2, each with 2 CPU processes over gloo (recipes/accelerate/*_cpu.yaml),
with the shared value head, a separate critic, a LoRA adapter, and Online-ST: training, replicas, resume (also after
a process is killed mid-checkpoint), final folders, global logged metrics, the reward model's scores, the
non-finite-weights refusal; the FSDP2-on-CPU setup (reft_trl.trainers.fsdp_cpu); the memory arithmetic of the
README's engine table (reft_trl.models.memory)."""

from __future__ import annotations

import json
import os
import shutil
import signal
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
from reft_trl.trainers.checkpoints import COMPLETE_MARKER, incomplete_reason, newest_complete

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
ONLINE_ST_RUNS = {"zero3_cpu.yaml": (29535, 29536), "fsdp2_cpu.yaml": (29537, 29538)}  # the killed run, the resume
PEFT_RUNS = {"zero3_cpu.yaml": 29539, "fsdp2_cpu.yaml": 29540}
TIMING_METRICS = {"eps", "step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}
"""Logged metrics that each process measures for itself (wall-clock time): the only ones allowed to differ."""


@pytest.fixture(scope="module")
def reward_model(tiny_checkpoint, tmp_path_factory) -> str:
    from test_reward_models import save_classifier
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("sharded-rm") / "rm"
    save_classifier(path, AutoTokenizer.from_pretrained(tiny_checkpoint), seed=1)
    return str(path)


@pytest.fixture(scope="module")
def launch(tiny_checkpoint, reward_model):
    """``launch(config, port, out, *args)``: ``accelerate launch`` tests/distributed/reft_sharded.py with this
    worktree's sources; returns (return code, stdout, stderr). A launch past its timeout is killed with all its
    processes (its own session) and fails the test instead of hanging it."""

    def run(config: str, port: int, out: Path, *args: str, timeout: int = 600):
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--main_process_port", str(port), str(SCRIPT), "--model", tiny_checkpoint, "--output_dir", str(out),
            "--reward_model", reward_model, *args,
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env,
            start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} ran past {timeout} s\nSTDERR:\n{stderr[-6000:]}")
        return proc.returncode, stdout, stderr

    return run


def ran(result, cmd="reft_sharded.py") -> None:
    returncode, stdout, stderr = result
    assert returncode == 0, f"{cmd}\nSTDOUT:\n{stdout[-4000:]}\nSTDERR:\n{stderr[-6000:]}"


@pytest.fixture(scope="module", params=list(RUNS), ids=lambda r: f"{r[0].removesuffix('_cpu.yaml')}-{r[1]}")
def sharded_run(request, launch, tmp_path_factory):
    """One ReFT launch per engine and value function: 4 steps uninterrupted, then resumed from checkpoint-2 (~15-25
    s)."""
    if request.param[0].startswith("zero3"):
        pytest.importorskip("deepspeed")
    config, value_model = request.param
    out = tmp_path_factory.mktemp(f"sharded-{config.removesuffix('.yaml')}-{value_model}")
    # the separate critic trains with gradient checkpointing (as the GPU recipes do), the shared head without
    checkpointing = ["--gradient_checkpointing"] if value_model == "separate" else []
    ran(launch(config, RUNS[request.param], out, "--value_model", value_model, *checkpointing))
    return config, value_model, out, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module", params=list(PEFT_RUNS), ids=lambda c: c.removesuffix("_cpu.yaml"))
def peft_run(request, launch, tmp_path_factory):
    """ReFT with a LoRA adapter (and the shared value head) per engine, with gradient checkpointing: 4 steps, then
    resumed from checkpoint-2."""
    config = request.param
    if config.startswith("zero3"):
        pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp(f"peft-{config.removesuffix('.yaml')}")
    ran(launch(config, PEFT_RUNS[config], out, "--peft", "--gradient_checkpointing"))
    return config, out, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module", params=list(ONLINE_ST_RUNS), ids=lambda c: c.removesuffix("_cpu.yaml"))
def online_st_run(request, launch, tmp_path_factory):
    """Online-ST per engine, in two launches (~15 s each): a run whose process 1 is SIGKILLed while it writes
    checkpoint-4 (after the engine's files, before the completion marker), then a launch that trains 4 steps
    uninterrupted and resumes the killed run with ``resume_from_checkpoint=True``."""
    config = request.param
    if config.startswith("zero3"):
        pytest.importorskip("deepspeed")
    killed_port, port = ONLINE_ST_RUNS[config]
    killed_out = tmp_path_factory.mktemp(f"online-st-killed-{config.removesuffix('.yaml')}")
    killed = launch(
        config, killed_port, killed_out, "--trainer", "online_st", "--kill_rank", "1", "--kill_step", "4", timeout=300
    )  # torchrun ends process 0 once process 1 is gone; a hang fails the test after 300 s
    checkpoint = killed_out / "run" / "checkpoint-4"
    left = {  # what the kill left, before the resume rewrites checkpoint-4
        "files": sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file()),
        "reason": incomplete_reason(checkpoint),
        "previous": incomplete_reason(killed_out / "run" / "checkpoint-2"),
    }
    out = tmp_path_factory.mktemp(f"online-st-{config.removesuffix('.yaml')}")
    resumed = launch(config, port, out, "--trainer", "online_st", "--resume_latest", str(killed_out / "run"))
    ran(resumed)
    return config, out, json.loads((out / "result.json").read_text()), killed, left, resumed


@pytest.mark.slow
def test_sharded_training_shards_and_updates_the_head_and_the_trunk(sharded_run):
    config, value_model, _, result = sharded_run
    assert result["world_size"] == 2
    assert result["gradient_checkpointing"] == (value_model == "separate")
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


@pytest.mark.slow
def test_zero3_without_gathered_saves_is_refused_at_start_on_every_process(launch, tmp_path):
    """ZeRO-3 without stage3_gather_16bit_weights_on_model_save would save only DeepSpeed's partitions (no plain
    folder, no value_model/, so no resumable ReFT checkpoint): both processes refuse before step 0 (~10 s)."""
    pytest.importorskip("deepspeed")
    ds = json.loads((CONFIGS / "zero3_cpu.json").read_text())
    del ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    (tmp_path / "zero3.json").write_text(json.dumps(ds))
    yaml = (
        (CONFIGS / "zero3_cpu.yaml")
        .read_text()
        .replace("recipes/accelerate/zero3_cpu.json", str(tmp_path / "zero3.json"))
    )
    (tmp_path / "zero3.yaml").write_text(yaml)
    returncode, _, stderr = launch(str(tmp_path / "zero3.yaml"), 29541, tmp_path / "out", timeout=300)
    assert returncode != 0
    assert stderr.count("DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save") >= 2, stderr[-4000:]
    assert not (tmp_path / "out" / "run").exists() or not list((tmp_path / "out" / "run").glob("checkpoint-*"))


def per_process(out: Path) -> list[dict]:
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def assert_logged_metrics_are_global(out: Path) -> None:
    """Every process logs the same history (bar its own wall-clock timings), and the reward and length metrics are
    those of the completions of both processes: each process's rule reward recorded what it scored."""
    ranks = per_process(out)
    histories = [[{k: v for k, v in e.items() if k not in TIMING_METRICS} for e in r["log_history"]] for r in ranks]
    assert histories[0] == histories[1]
    logged = [e for e in histories[0] if "rewards/reward/mean" in e]
    calls = list(zip(ranks[0]["reward_calls"], ranks[1]["reward_calls"], strict=True))
    assert len(logged) == len(calls) >= 2  # one entry per rollout (ReFT: every 2 steps, 2 PPO epochs each)
    for entry, (mine, theirs) in zip(logged, calls, strict=True):
        assert len(mine["scores"]) == len(theirs["scores"]) == 4  # each process scored its own 4 completions
        scores, lengths = mine["scores"] + theirs["scores"], mine["lengths"] + theirs["lengths"]
        assert entry["rewards/reward/mean"] == pytest.approx(sum(scores) / 8, rel=1e-6)
        assert entry["completions/mean_length"] == pytest.approx(sum(lengths) / 8, rel=1e-6)
    # the two processes sampled different completions: a metric of one process's data would differ from these
    assert any(m["scores"] != t["scores"] or m["lengths"] != t["lengths"] for m, t in calls)


def assert_nonfinite_weights_refused_everywhere(out: Path, target: str) -> None:
    """A NaN in one parameter's shard on one process only: both processes refuse the checkpoint, naming it."""
    ranks = [r["nonfinite"] for r in per_process(out)]
    assert sum(r["poisoned"] for r in ranks) == 1
    for r in ranks:
        assert r["refusal"] is not None and "Non-finite weights at step 5" in r["refusal"] and target in r["refusal"]
        assert not r["checkpoint_written"]


@pytest.mark.slow
def test_sharded_logged_metrics_are_global_and_the_same_on_every_process(sharded_run):
    assert_logged_metrics_are_global(sharded_run[2])


def policy_names(trained: dict) -> set[str]:
    """The names of a plain causal LM's parameters in ``trained`` (no value function, no LoRA, PEFT's base_layer)."""
    return {
        n.replace(".base_layer", "")
        for n in trained
        if n.split(".")[0] not in ("v_head", "critic") and ".lora_" not in n
    }


@pytest.mark.slow
def test_sharded_vllm_weight_sync_sends_the_full_policy_without_the_value_function(sharded_run):
    """TRL's vLLM weight sync walked under the engine with reft-trl's filter (no vLLM on CPU): every process takes
    part in the gathers, and what would be pushed is exactly the trained policy's full tensors, no head or critic."""
    _, _, out, result = sharded_run
    trained = load_file(out / "trained.safetensors")
    assert set(result["vllm_sync_names"]) == policy_names(trained)
    assert result["vllm_sync_exact"]


@pytest.mark.slow
def test_sharded_reward_model_scores_as_on_one_process(sharded_run, reward_model):
    """The reward model (by path: TRL loads it; beside the separate critic, as a RewardModel: the trainer prepares it;
    partitioned under ZeRO-3) gives the scores it gives unsharded, on one process, to the completions both processes
    sampled: the logged rewards/rm/mean is their mean."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from reft_trl.models.reward_model import classifier_scores, reward_model_texts

    rm, tokenizer = (
        AutoModelForSequenceClassification.from_pretrained(reward_model),
        AutoTokenizer.from_pretrained(reward_model),
    )
    ranks = per_process(sharded_run[2])
    logged = [e["rewards/rm/mean"] for e in ranks[0]["log_history"] if "rewards/rm/mean" in e]
    calls = list(zip(ranks[0]["reward_calls"], ranks[1]["reward_calls"], strict=True))
    assert len(logged) == len(calls) >= 2
    for mean, (mine, theirs) in zip(logged, calls, strict=True):
        prompts, completions, last = zip(*(mine["texts"] + theirs["texts"]), strict=True)
        terminated = [token == tokenizer.eos_token_id for token in last]
        texts, special = reward_model_texts(tokenizer, prompts, completions, terminated)
        scores = classifier_scores(rm, tokenizer, texts, add_special_tokens=special)
        assert mean == pytest.approx(sum(scores) / len(scores), rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_sharded_nonfinite_weights_are_refused_on_every_process(sharded_run):
    _, value_model, out, result = sharded_run
    assert result["nonfinite_target"].startswith("critic." if value_model == "separate" else "v_head.")
    assert_nonfinite_weights_refused_everywhere(out, result["nonfinite_target"])


def shard_files(config: str, names, rank: int) -> list[str]:
    """The engine's files of process ``rank`` (ZeRO-3: its partition of the weights and optimizer state; FSDP2:
    its DCP shards)."""
    pattern = f"zero_pp_rank_{rank}_" if config.startswith("zero3") else f"__{rank}_0.distcp"
    return [n for n in names if pattern in Path(n).name]


@pytest.mark.slow
def test_sharded_checkpoint_marker_covers_every_process_shards(sharded_run, tmp_path):
    """The completion marker lists the engine's shard files of both processes, so a lost or truncated shard of
    process 1 makes the checkpoint incomplete, and resume_from_checkpoint=True falls back to the one before."""
    config, _, out, _ = sharded_run
    marker = json.loads((out / "run" / "checkpoint-4" / COMPLETE_MARKER).read_text())["files"]
    assert shard_files(config, marker, 0) and shard_files(config, marker, 1)
    assert {"reft_rollout_state-0.pt", "reft_rollout_state-1.pt"} <= set(marker)
    run = shutil.copytree(out / "run", tmp_path / "run")
    shard = shard_files(config, marker, 1)[0]
    with open(run / "checkpoint-4" / shard, "r+b") as f:
        f.truncate(marker[shard] // 2)
    assert shard in incomplete_reason(run / "checkpoint-4")
    assert newest_complete(run) == run / "checkpoint-2"


@pytest.mark.slow
def test_sharded_online_st_trains_agrees_resumes_and_saves_a_plain_folder(online_st_run):
    config, out, result, _, _, _ = online_st_run
    assert result["engine"] == ("deepspeed" if config.startswith("zero3") else "fsdp")
    assert result["all_params_sharded"] and all(0.49 < f < 0.51 for f in result["held_fraction"])
    assert result["trunk_changed"] and result["replicas_identical"]
    assert result["completions_per_rollout"] == 8
    assert {"loss/gold_nll", "loss/sample_nll", "frac_correct_samples", "objective/scores"} <= set(result["log_keys"])
    assert result["resume_exact"] and result["resumed_losses"] == result["losses"]
    trained = load_file(out / "trained.safetensors")
    model = assert_deployable(out / "final", value_model=None)
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(p, trained[n]) for n, p in model.state_dict().items())
    assert_logged_metrics_are_global(out)
    assert_nonfinite_weights_refused_everywhere(out, result["nonfinite_target"])


@pytest.mark.slow
def test_sharded_checkpoint_killed_before_its_marker_is_invisible_to_resume(online_st_run):
    """Process 1 SIGKILLed while it writes checkpoint-4 (its engine shards written, before the marker): the launch
    fails, checkpoint-4 has no marker, and resume_from_checkpoint=True skips it, resumes from checkpoint-2 and ends
    with the uninterrupted run's weights."""
    config, _, result, killed, left, resumed = online_st_run
    returncode, _, stderr = killed
    assert returncode != 0 and "killing process 1 while it writes checkpoint-4" in stderr, stderr[-4000:]
    assert left["previous"] is None  # checkpoint-2 complete
    assert left["reason"] == f"no {COMPLETE_MARKER} (its save was interrupted)"
    assert shard_files(config, left["files"], 0) and shard_files(config, left["files"], 1)  # the engine's files
    assert "reft_rollout_state-1.pt" not in left["files"]
    assert "Skipping the incomplete checkpoint" in resumed[2] and "checkpoint-4" in resumed[2]
    assert result["resume_exact"]


@pytest.mark.slow
def test_sharded_peft_trains_the_adapter_and_the_head_resumes_and_saves_an_adapter_folder(peft_run, tiny_checkpoint):
    config, out, result = peft_run
    assert result["engine"] == ("deepspeed" if config.startswith("zero3") else "fsdp")
    assert result["all_params_sharded"] and result["value_function_sharded"]  # frozen base weights included
    assert all(0.49 < f < 0.51 for f in result["held_fraction"]), result["held_fraction"]
    assert result["adapter_changed"] and result["value_changed"] and result["base_frozen"]
    assert result["gradient_checkpointing"]
    assert result["replicas_identical"]
    assert result["resume_exact"] and result["resumed_losses"] == result["losses"]
    trained = load_file(out / "trained.safetensors")
    model = assert_deployable(out / "final", value_model="shared", base_model=tiny_checkpoint)  # an adapter folder
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    assert adapter and all(
        torch.equal(t, trained[n.removeprefix("base_model.model.").replace(".weight", ".default.weight")])
        for n, t in adapter.items()
    )
    assert set(result["vllm_sync_names"]) == policy_names(trained)  # the merged policy, without the head
    assert attach_value_function(model, str(out / "final"), value_model="shared") == "shared"
    assert torch.equal(model.v_head.weight, trained["v_head.weight"])
    assert_logged_metrics_are_global(out)
    assert_nonfinite_weights_refused_everywhere(out, result["nonfinite_target"])
