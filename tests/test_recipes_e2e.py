"""The recipes chained as `make demo` chains them, in CI size: tiny task, a few steps each, real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_deployable

RECIPES = Path(__file__).parents[1] / "recipes"
TASK = '{"n_train": 24, "n_test_iid": 6, "n_test_ood": 6}'
CPU = ["--use_cpu", "true", "--bf16", "false", "--report_to", "none", "--gradient_checkpointing", "false",
       "--disable_tqdm", "true", "--seed", "0"]  # fmt: skip


def run(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(RECIPES / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
    base, task = tmp_path / "base", tmp_path / "task"
    run("tiny_model.py", "--dataset", "synthetic", "--task_config", TASK, "--output_dir", str(base),
        "--task_dir", str(task), "--hidden_size", "32", "--num_hidden_layers", "1", "--intermediate_size", "64")  # fmt: skip
    assert (base / "model.safetensors").exists() and (task / "synthetic_python_sdp.json").exists()
    data = ["--dataset", "synthetic", "--data_path", str(task), "--cot", "python", "--eval_split", "test_iid"]

    sft = tmp_path / "sft"
    run("sft.py", *data, *CPU, "--model_name_or_path", str(base), "--output_dir", str(sft),
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--accuracy_max_new_tokens", "16")  # fmt: skip
    log = json.loads((sft / "accuracy_log.json").read_text())
    assert [round(e["epoch"]) for e in log["evaluations"]] == [1, 2]
    warmup = run("pick_checkpoint.py", str(sft), "--epoch", "1").strip()
    assert warmup == str(sft / "checkpoint-3")
    assert run("pick_checkpoint.py", str(sft), "--best").strip() == log["best_model_checkpoint"]
    for folder in (base, sft, *sft.glob("checkpoint-*")):
        assert_deployable(folder)

    rl = [*data, *CPU, "--model_name_or_path", warmup, "--max_steps", "2", "--per_device_train_batch_size", "4",
          "--max_completion_length", "12", "--eval_strategy", "steps", "--eval_steps", "2"]  # fmt: skip
    run("reft.py", *rl, "--output_dir", str(tmp_path / "reft"))
    history = json.loads((tmp_path / "reft" / "log_history.json").read_text())
    assert any("loss/value" in e for e in history) and any("eval_accuracy" in e for e in history)
    assert_deployable(tmp_path / "reft", value_model="shared")
    run("online_st.py", *rl, "--output_dir", str(tmp_path / "online-st"))
    history = json.loads((tmp_path / "online-st" / "log_history.json").read_text())
    assert any("loss/gold_nll" in e for e in history)
    assert_deployable(tmp_path / "online-st")

    out = run("report.py", *data[:4], "--eval_splits", "test_iid,test_ood", "--output_dir", str(tmp_path),
              "--max_new_tokens", "12", "--run", f"Warm-up={warmup}", f"ReFT={tmp_path / 'reft'}",
              "--offset", "ReFT=3")  # fmt: skip
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"Warm-up", "ReFT"}
    for result in report.values():
        assert result["scores"]["test_iid"]["n"] == 6 and result["scores"]["all"]["n"] == 12
        assert 0 <= result["scores"]["all"]["accuracy"] <= 1
    assert "| ReFT |" in out and (tmp_path / "report.md").exists()
    assert (tmp_path / "curves.png").stat().st_size > 10_000
