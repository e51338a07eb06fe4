"""Smoke test of benchmarks/ppo_step.py: the tiny preset runs end to end and writes a complete, consistent report.

Timing *targets* are what the benchmark reports; they are never asserted here (timings on a shared CI machine are
noise). What is asserted is behaviour that a broken benchmark would get wrong: fields, positive times, equal
completion lengths, the forwards each trainer runs, and the separate critic's extra parameters and memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "ppo_step.py"
TINY = {"hidden": 32, "batch": 4, "micro_batch": 2, "completion_len": 8, "prompt_len": 8, "epochs": 2}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "ppo_step_tiny.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny", "--device", "cpu", "--iterations", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"json": json.loads(out.read_text()), "stdout": proc.stdout}


pytestmark = pytest.mark.slow  # three fresh worker processes import torch/transformers/trl: ~1 min on 2 cores


def test_report_has_hardware_settings_and_definitions(report):
    data = report["json"]
    assert data["benchmark"] == "ppo_step" and data["preset"] == "tiny"
    hw = data["hardware"]
    for key in ("cpu_model", "cpu_count", "torch", "transformers", "trl", "gpu_name"):
        assert key in hw
    assert hw["cpu_model"] and hw["cpu_count"] >= 1
    assert data["settings"]["device"] == "cpu" and data["settings"]["iterations"] == 2
    assert data["memory_metric"].startswith("peak memory = growth of the process's peak resident set size")
    assert any("completions per iteration: 4" in m for m in data["matched"])
    assert set(data["configs"]) == {"reft", "reft-separate", "grpo", "reinforce-pp"}


def test_memory_baseline_already_holds_the_training_libraries(report):
    """Libraries the trainers import lazily (trl, deepspeed via accelerate) are in the baseline, not in the figure."""
    for name, c in report["json"]["configs"].items():
        late = set(c["memory"]["packages_imported_after_baseline"])
        assert not late & {"trl", "reft_trl", "deepspeed", "accelerate", "peft", "pydantic", "rich"}, (name, late)


def test_times_are_positive_and_summaries_consistent(report):
    for name, c in report["json"]["configs"].items():
        for key in ("iteration_s", "rollout_s", "generation_s", "update_s", "iteration_without_generation_s"):
            s = c[key]
            assert s["n"] == 2 == len(s["values"]), (name, key)
            assert all(v > 0 for v in s["values"]), (name, key, s)
            assert s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"], (name, key, s)
        # the parts add up to the whole, iteration by iteration
        for it, ro, up in zip(c["iteration_s"]["values"], c["rollout_s"]["values"], c["update_s"]["values"]):
            assert it == pytest.approx(ro + up)
        assert c["generation_s"]["median"] <= c["rollout_s"]["median"]
        assert len(c["warmup_iteration_s"]) == 1
        raw = report["json"]["raw_iterations"][name]
        assert [it["round"] for it in raw] == [0, 1, 2] and [it["warmup"] for it in raw] == [True, False, False]


def test_generation_is_fixed_length_and_batches_are_matched(report):
    for name, c in report["json"]["configs"].items():
        assert c["completion_tokens_mean"] == TINY["completion_len"], name
        assert c["prompt_tokens_mean"] == TINY["prompt_len"], name
        assert c["completions_per_iteration"] == TINY["batch"], name


def test_each_trainer_runs_the_expected_trunk_forwards(report):
    """Sequences through each trunk per iteration (generation excluded): one no-grad policy pass (old log-probs,
    and ReFT's values with it), one reference pass, ``epochs`` grad passes; the separate critic doubles the passes."""
    configs = report["json"]["configs"]
    b, grad = TINY["batch"], TINY["epochs"] * TINY["batch"]
    base = {"policy/no_grad": b, "reference/no_grad": b, "policy/grad": grad}
    assert configs["grpo"]["sequence_forwards_per_iteration"] == base
    assert configs["reft"]["sequence_forwards_per_iteration"] == base
    assert configs["reinforce-pp"]["sequence_forwards_per_iteration"] == base  # no critic, no value forward
    assert configs["reft-separate"]["sequence_forwards_per_iteration"] == {
        **base,
        "critic/no_grad": b,
        "critic/grad": grad,
    }


def test_separate_critic_has_more_parameters_and_state(report):
    configs = report["json"]["configs"]
    shared, separate, grpo, rpp = (configs[n]["params"] for n in ("reft", "reft-separate", "grpo", "reinforce-pp"))
    assert shared["trainable"] - grpo["trainable"] == TINY["hidden"] + 1  # the value head: Linear(hidden, 1)
    assert rpp["trainable"] == grpo["trainable"] and rpp["value"] == 0  # critic-free: no head at all
    assert shared["policy"] == separate["policy"] == grpo["policy"] == shared["reference"]
    assert separate["value"] > shared["value"] and separate["trainable"] > shared["trainable"]
    static = {n: configs[n]["memory"]["static_tensor_bytes"] for n in configs}
    assert static["reft-separate"]["total"] > static["reft"]["total"] > 0
    # parameters, one gradient each and two AdamW moments each (fp32): the critic's all show up
    for name, s in static.items():
        assert s["optimizer_state"] == 2 * s["gradients"], name
    for name, c in configs.items():
        assert c["peak_memory_bytes"] > 0, name
        assert c["memory"]["rss_peak_growth_bytes"] >= c["memory"]["rss_growth_after_init_bytes"], name


def test_ratios_and_markdown_are_reported(report):
    data = report["json"]
    ratios = data["ratios"]
    assert set(ratios) == {"a/b", "a/c", "d/a", "d/c"}
    for key, r in ratios.items():
        assert r["time_ratio_of_medians"] > 0 and r["peak_memory_ratio"] > 0, key
        assert r["time_paired"]["n"] == 2
        assert ("time_meets_target" in r) == (key in ("a/b", "a/c")), key  # d/a, d/c: reported, no target
        assert r["without_generation_ratio_of_medians"] > 0 and 0 < r["numerator_generation_share"] < 1, key
    assert ratios["a/b"]["time_target"] == 0.6 and ratios["a/b"]["memory_target"] == 0.6
    assert ratios["a/c"]["time_target"] == 1.3
    assert ratios["a/b"]["static_tensor_ratio"] < 1
    out = report["stdout"]
    assert "| config | median s/iteration | p10-p90 |" in out
    assert "(b) ReFT, separate critic (ablation)" in out and "| a/c (reft / grpo) |" in out
    assert "(d) ReFT, REINFORCE++ (no critic)" in out and "| d/a (reinforce-pp / reft) |" in out
    assert data["markdown"] in out
