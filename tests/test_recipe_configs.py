"""Every YAML under recipes/configs parses into its recipe's dataclasses and carries the paper's values."""

from __future__ import annotations

from pathlib import Path

import pytest
from trl import ModelConfig, TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.trainers import ReFTConfig, WarmupSFTConfig

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"
DATASETS = ("gsm8k", "svamp", "mathqa", "mathqa-numeric")


def parse(path: Path, config_class, tmp_path):
    parser = TrlParser((DataArguments, config_class, ModelConfig))
    # bf16 is for GPUs; the CPU here refuses it, which is not what this test is about.
    argv = ["--config", str(path), "--bf16", "false", "--model_name_or_path", "m", "--output_dir", str(tmp_path)]
    return parser.parse_args_and_config(args=argv)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("cot", ["nl", "python"])
def test_paper_configs_parse_with_the_papers_values(dataset, cot, tmp_path):
    data, sft, _ = parse(CONFIGS / f"{dataset}_{cot}_sft.yaml", WarmupSFTConfig, tmp_path)
    assert (data.dataset, data.cot) == (dataset, cot)
    assert sft.learning_rate == 1e-5 and sft.num_train_epochs == 40
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps == 48
    assert sft.eval_strategy == "epoch" and sft.save_strategy == "epoch" and sft.warmup_steps == 0.1

    data, reft, _ = parse(CONFIGS / f"{dataset}_{cot}_reft.yaml", ReFTConfig, tmp_path)
    assert (data.dataset, data.cot) == (dataset, cot)
    expected_kl = 0.05 if cot == "nl" and dataset != "mathqa-numeric" else 0.01
    assert reft.beta == reft.kl_coef == expected_kl
    assert reft.learning_rate == 3e-7 and reft.lr_scheduler_type == "constant"
    assert (reft.vf_coef, reft.gamma, reft.lam, reft.num_iterations) == (5.0, 1.0, 0.95, 2)
    assert reft.num_generations == 1 and reft.temperature == 1.0 and reft.top_k == 0
    # 32 questions per rollout (4 per GPU x 8 GPUs in the paper), one optimizer step per PPO epoch.
    assert reft.generation_batch_size == 32
    assert reft.steps_per_generation == reft.gradient_accumulation_steps


def test_every_config_file_is_covered():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    paper = {f"{d}_{c}_{s}.yaml" for d in DATASETS for c in ("nl", "python") for s in ("sft", "reft")}
    assert paper <= names
