"""Every YAML under recipes/configs parses into its recipe's dataclasses and carries the paper's values."""

from __future__ import annotations

import shutil
import subprocess
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


def test_math_configs_parse_with_the_gsm8k_nl_values_and_longer_sequences(tmp_path):
    """MATH is not in the paper: N-CoT only (no programs), the gsm8k N-CoT hyperparameters, longer sequences."""
    data, sft, _ = parse(CONFIGS / "math_nl_sft.yaml", WarmupSFTConfig, tmp_path)
    assert (data.dataset, data.cot) == ("math", "nl")
    assert sft.learning_rate == 1e-5 and sft.num_train_epochs == 40 and sft.warmup_steps == 0.1
    assert sft.per_device_train_batch_size * sft.gradient_accumulation_steps == 48
    assert sft.max_length > 1024

    data, reft, _ = parse(CONFIGS / "math_nl_reft.yaml", ReFTConfig, tmp_path)
    assert (data.dataset, data.cot) == ("math", "nl")
    assert reft.beta == reft.kl_coef == 0.05 and reft.learning_rate == 3e-7
    assert (reft.vf_coef, reft.gamma, reft.lam, reft.num_iterations) == (5.0, 1.0, 0.95, 2)
    assert reft.generation_batch_size == 32 and reft.partial_reward == 0.1
    assert reft.max_completion_length > 512


def test_every_config_file_is_covered():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    paper = {f"{d}_{c}_{s}.yaml" for d in DATASETS for c in ("nl", "python") for s in ("sft", "reft")}
    assert paper | {"math_nl_sft.yaml", "math_nl_reft.yaml"} <= names
    assert {p.name for p in (CONFIGS / "ppo").glob("*.yaml")} == {f"{name}.yaml" for name in PPO_CONFIGS}


# ------------------------------------------------------------------------------------------ recipes/ppo.py configs
# TRL 1.12's examples/scripts/ppo commands: (dataset, train split, policy, reward model, episodes per rollout,
# total_episodes, whether it evaluates).
PPO_CONFIGS = {
    "tldr": (
        "trl-lib/tldr",
        "train",
        "cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr",
        "cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr",
        64,
        30000,
        True,
    ),
    "descriptiveness": (
        "trl-internal-testing/descriptiveness-sentiment-trl-style",
        "descriptiveness",
        "EleutherAI/pythia-1b-deduped",
        "EleutherAI/pythia-1b-deduped",
        64,
        10000,
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(PPO_CONFIGS))
def test_ppo_configs_parse_with_trl_1_12s_values(name, load_recipe, tmp_path):
    dataset, split, policy, reward_model, per_rollout, episodes, evaluates = PPO_CONFIGS[name]
    parser = load_recipe("ppo").make_parser()
    argv = ["--config", str(CONFIGS / "ppo" / f"{name}.yaml"), "--bf16", "false", "--output_dir", str(tmp_path)]
    script, ppo, model = parser.parse_args_and_config(args=argv)
    assert (script.dataset_name, script.dataset_train_split, model.model_name_or_path) == (dataset, split, policy)
    assert script.reward_model_path == [reward_model] and script.reward_funcs is None
    assert (ppo.eval_strategy != "no") == evaluates and (not evaluates or script.dataset_test_split == "validation")
    # PPOConfig's values (1.12's defaults and the commands' flags) under their 1.12 names
    assert ppo.learning_rate == 3e-6 and ppo.lr_scheduler_type == "linear"
    assert (ppo.kl_coef, ppo.cliprange, ppo.cliprange_value, ppo.vf_coef, ppo.gamma, ppo.lam) == (
        0.05, 0.2, 0.2, 0.1, 1.0, 0.95
    )  # fmt: skip
    assert (ppo.kl_estimator, ppo.whiten_rewards, ppo.missing_eos_penalty) == ("k1", False, 1.0)
    # what differs from ReFT's defaults (docs/migrating-from-trl-ppo.md, "Reproducing a TRL 1.12 run")
    assert (ppo.loss_type, ppo.advantage_whitening, ppo.max_grad_norm) == ("bnpo", "local", 0)
    assert (ppo.response_length, ppo.temperature, ppo.top_k, ppo.top_p) == (53, 0.7, 0, 1.0)
    assert ppo.value_model == "shared" and ppo.num_generations == 1
    # the rollout and max_steps = ceil(total_episodes / rollout) x num_ppo_epochs x num_mini_batches
    assert ppo.generation_batch_size == per_rollout
    assert (ppo.num_ppo_epochs, ppo.num_mini_batches) == (4, 1)
    assert ppo.max_steps == -(-episodes // per_rollout) * 4


def test_make_ppo_targets_launch_the_recipe_with_their_config(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).parents[1]
    for name in PPO_CONFIGS:
        argv = ["make", "-n", f"ppo-{name}", "ARGS=--seed 7"]
        [line] = [
            x
            for x in subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
            if "recipes/ppo.py" in x
        ]
        assert (
            f"recipes/ppo.py --config recipes/configs/ppo/{name}.yaml --output_dir outputs/ppo-{name} --seed 7" in line
        )


def test_make_seeds_trains_every_method_with_each_seed_and_reports_them_together(tmp_path):
    """`make -n seeds` (a dry run): each seed reaches every method's recipe (and Offline-ST's sampling), and the report
    groups seed 0 (`make results`' runs) with the others under one label per method."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    results, root = tmp_path / "results", Path(__file__).parents[1]
    argv = ["make", "-n", "seeds", "SEEDS=3 4", f"RESULTS={results}", f"DEMO={tmp_path / 'demo'}"]
    lines = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    for seed in (3, 4):
        out = results / f"seed-{seed}"
        for recipe, method in [("reft", "reft"), ("sft", "sft-continued"), ("online_st", "online-st")]:
            [line] = [x for x in lines if f"recipes/{recipe}.py" in x and f"--output_dir {out}/{method} " in x + " "]
            assert f"--seed {seed}" in line, line
        [line] = [x for x in lines if "recipes/offline_st.py" in x and f"{out}/offline-st" in x]
        assert f"--seed {seed} --sampling_seed {seed}" in line
        assert f"touch {out}/done" in lines
    report = "\n".join(lines[next(i for i, x in enumerate(lines) if "recipes/report.py" in x) :])
    for method in ("sft-continued", "offline-st", "online-st", "reft"):
        assert f'{results}/{method},{results}/seed-3/{method},{results}/seed-4/{method}"' in report


def test_make_ablations_runs_each_setting_from_the_warmup_and_reports_step_times(tmp_path):
    """`make -n ablations`: ReFT (GAE), REINFORCE++, GRPO with 4 samples and dapo + clip-higher each train from the
    demo's warm-up with the demo's ReFT config (32 completions per step), reported with a s/step column."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out, root = tmp_path / "abl", Path(__file__).parents[1]
    argv = ["make", "-n", "ablations", f"ABLATIONS={out}", f"DEMO={tmp_path / 'demo'}"]
    lines = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    expected = {
        "gae": "--output_dir " + f"{out}/gae",  # the demo's ReFT run again, timed like the others
        "reinforce_pp": "--advantage_estimator reinforce_plus_plus",
        "grpo_4": "--advantage_estimator grpo --num_generations 4",
        "dapo_clip_higher": "--loss_type dapo --epsilon_high 0.28",
    }
    for name, flags in expected.items():
        [line] = [x for x in lines if "recipes/reft.py" in x and f"--output_dir {out}/{name} " in x + " "]
        assert "--config recipes/configs/demo/reft.yaml" in line and line.rstrip().endswith(flags)
        assert "pick_checkpoint.py" in line  # from the warm-up checkpoint
    report = "\n".join(lines[next(i for i, x in enumerate(lines) if "recipes/report.py" in x) :])
    assert "--step_time true" in report and f"ReFT (GAE)={out}/gae" in report


REFT_CONFIGS = sorted(p.name for p in CONFIGS.glob("*_reft.yaml")) + ["demo/reft.yaml"]


@pytest.mark.parametrize("name", REFT_CONFIGS)
def test_online_st_reads_the_reft_configs_and_leaves_their_ppo_settings_out(load_recipe, name, tmp_path, caplog):
    """Online-ST has no configs of its own (`make online-st-gsm8k` passes ReFT's with --kl_coef 0): the shared settings
    come through, the PPO-only ones (vf_coef, gamma, ...) are logged as unused, and on the command line they are an
    error, as is any key neither config knows."""
    recipe = load_recipe("online_st")
    parser = TrlParser((DataArguments, recipe.OnlineSTConfig, ModelConfig))
    argv = ["--config", str(CONFIGS / name), "--bf16", "false", "--model_name_or_path", "m",
            "--output_dir", str(tmp_path), "--kl_coef", "0"]  # fmt: skip
    data, online, _ = recipe.parse_args_and_config(parser, argv, unused_config_keys=recipe.PPO_ONLY)
    _, reft, _ = parse(CONFIGS / name, ReFTConfig, tmp_path)
    assert online.beta == 0 and data.dataset == parse(CONFIGS / name, ReFTConfig, tmp_path)[0].dataset
    for shared in ("learning_rate", "per_device_train_batch_size", "max_completion_length", "num_generations"):
        assert getattr(online, shared) == getattr(reft, shared), shared
    assert "Not used here, from the config file:" in caplog.text and "vf_coef" in caplog.text
    assert not hasattr(online, "vf_coef")
    with pytest.raises(ValueError, match="vf_coef"):
        recipe.parse_args_and_config(parser, [*argv, "--vf_coef", "2"], unused_config_keys=recipe.PPO_ONLY)
    with pytest.raises(ValueError, match=r"total_episodes.*docs/migrating-from-trl-ppo.md"):
        recipe.parse_args_and_config(parser, [*argv, "--total_episodes", "9"], unused_config_keys=recipe.PPO_ONLY)
