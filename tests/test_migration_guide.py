"""docs/migrating-from-trl-ppo.md covers every name of TRL 1.12's PPO API, and ReFTConfig does what it says.

The 1.12 names below are data copied from TRL 1.12.0's ``PPOConfig``, ``PPOTrainer.__init__`` and the metrics its
``train`` logs (``shared/docs/trl-ppo-1.12-api.md``), kept independent of the code's own table
(``reft_trl.trainers.ppo_config_names.NOT_TAKEN``), so a name the guide or the code forgets makes a test fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from trl import TrlParser

from reft_trl.trainers import OnlineSTConfig, ReFTConfig
from reft_trl.trainers.ppo_config_names import GUIDE, NOT_TAKEN, parse_args_and_config

# ---- TRL 1.12.0 (trl.experimental.ppo), as data
PPO_CONFIG_FIELDS = (
    "dataset_num_proc",
    "num_mini_batches",
    "total_episodes",
    "local_rollout_forward_batch_size",
    "num_sample_generations",
    "response_length",
    "stop_token",
    "stop_token_id",
    "temperature",
    "missing_eos_penalty",
    "sft_model_path",
    "world_size",
    "num_total_batches",
    "micro_batch_size",
    "local_batch_size",
    "batch_size",
    "local_mini_batch_size",
    "mini_batch_size",
    "reward_model_path",
    "model_adapter_name",
    "ref_adapter_name",
    "num_ppo_epochs",
    "whiten_rewards",
    "kl_coef",
    "kl_estimator",
    "cliprange",
    "vf_coef",
    "cliprange_value",
    "gamma",
    "lam",
    "ds3_gather_for_generation",
)
PPO_TRAINER_ARGS = (
    "args",
    "processing_class",
    "model",
    "ref_model",
    "reward_model",
    "train_dataset",
    "value_model",
    "data_collator",
    "eval_dataset",
    "optimizers",
    "callbacks",
    "peft_config",
)
PPO_METRICS = (
    "eps",
    "objective/kl",
    "objective/entropy",
    "objective/non_score_reward",
    "objective/rlhf_reward",
    "objective/scores",
    "policy/approxkl_avg",
    "policy/clipfrac_avg",
    "loss/policy_avg",
    "loss/value_avg",
    "val/clipfrac_avg",
    "policy/entropy_avg",
    "val/ratio",
    "val/ratio_var",
    "val/num_eos_tokens",
    "lr",
    "episode",
)
# A value (not the default) for each field ReFTConfig may accept, to check it lands where the guide says.
ACCEPTED_VALUES = {
    "num_mini_batches": 2,
    "response_length": 64,
    "temperature": 0.7,
    "missing_eos_penalty": 1.0,
    "num_ppo_epochs": 4,
    "whiten_rewards": True,
    "kl_coef": 0.1,
    "kl_estimator": "k3",
    "cliprange": 0.3,
    "vf_coef": 0.1,
    "cliprange_value": 0.3,
    "gamma": 0.99,
    "lam": 0.9,
    "ds3_gather_for_generation": False,
}

TEXT = (REPO_ROOT / GUIDE).read_text()


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict[str, str]:
    """Heading text -> the text under it, up to the next heading."""
    parts = re.split(r"^#{2,4} (.+)$", TEXT, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def table(section: str) -> dict[str, list[str]]:
    """The first table of ``section``: first cell (a single `code` name) -> the row's other cells."""
    rows = {}
    for line in sections()[section].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`([^`]+)`", cells[0]) if line.startswith("|") else None
        if match:
            assert match.group(1) not in rows, f"two rows for {match.group(1)} in {section!r}"
            rows[match.group(1)] = cells[1:]
    return rows


def config(tmp_path, **kwargs) -> ReFTConfig:
    return ReFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)


FIELD_ROWS = table("`PPOConfig` fields")


def status(name: str) -> tuple[str, str | None]:
    """(accepted | refused, the field it sets when accepted) as the guide's table says for a 1.12 field."""
    match = re.fullmatch(r"(accepted|refused)(?: as `(\w+)`)?", FIELD_ROWS[name][1])
    assert match, (
        f"the ReFTConfig cell of {name} is {FIELD_ROWS[name][1]!r}: 'accepted', 'accepted as `x`' or 'refused'"
    )
    kind, target = match.groups()
    return kind, (target or name) if kind == "accepted" else None


# ------------------------------------------------------------------------------------------------ completeness
@pytest.mark.parametrize(
    ("section", "names"),
    [
        ("`PPOConfig` fields", PPO_CONFIG_FIELDS),
        ("`PPOTrainer` arguments", PPO_TRAINER_ARGS),
        ("Metrics", PPO_METRICS),
    ],
)
def test_every_name_of_trl_1_12_has_its_row(section, names):
    rows = table(section)
    missing = [name for name in names if name not in rows]
    assert not missing, f"{GUIDE}, section {section!r}, has no row for {missing}"
    assert not set(rows) - set(names), f"rows for names TRL 1.12 does not have: {sorted(set(rows) - set(names))}"
    assert all(cell.strip() for row in rows.values() for cell in row), "an empty cell"


def test_guide_sorts_the_fields_as_the_code_does():
    """Refused in the guide = refused by the code (NOT_TAKEN); accepted = a ReFTConfig field."""
    refused = {name for name in PPO_CONFIG_FIELDS if status(name)[0] == "refused"}
    assert refused == set(NOT_TAKEN)
    fields = set(ReFTConfig.__dataclass_fields__)
    assert {name for name in PPO_CONFIG_FIELDS if status(name)[0] == "accepted"} == set(PPO_CONFIG_FIELDS) - refused
    assert not refused & fields and set(PPO_CONFIG_FIELDS) - refused <= fields


@pytest.mark.parametrize("name", PPO_CONFIG_FIELDS)
def test_each_field_does_what_the_guide_says(tmp_path, name):
    kind, target = status(name)
    if kind == "accepted":
        value = ACCEPTED_VALUES[name]
        args = config(tmp_path, **{name: value})
        assert getattr(args, name) == value and getattr(args, target) == value, (name, target)
        return
    with pytest.raises(TypeError) as info:
        config(tmp_path, **{name: 1})
    message = str(info.value)
    anchor = re.search(rf"{re.escape(GUIDE)}#([\w-]+)", message)
    assert name in message and anchor, message
    assert anchor.group(1) in {slug(heading) for heading in sections()}, f"{message}: no such section in {GUIDE}"


def test_num_mini_batches_sets_the_rollout_as_the_guide_says(tmp_path):
    args = config(tmp_path, num_mini_batches=2, gradient_accumulation_steps=4, per_device_train_batch_size=2)
    assert args.steps_per_generation == 8 and args.generation_batch_size == 16


def test_other_unknown_keywords_keep_pythons_error(tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_setting'") as info:
        config(tmp_path, no_such_setting=1)
    assert GUIDE not in str(info.value)


def test_subclasses_refuse_the_same_names(tmp_path):
    with pytest.raises(TypeError, match="total_episodes.*max_steps"):
        OnlineSTConfig(output_dir=str(tmp_path), use_cpu=True, total_episodes=100)


def test_command_line_and_yaml_get_the_pointer(tmp_path):
    parser = TrlParser((ReFTConfig,))
    base = ["--output_dir", str(tmp_path), "--use_cpu", "--report_to", "none"]
    with pytest.raises(ValueError, match=rf"--total_episodes: .*{GUIDE}#batch-sizes") as info:
        parse_args_and_config(parser, [*base, "--total_episodes", "100", "--stop_token=eos"])
    assert "--stop_token: " in str(info.value)
    with pytest.raises(ValueError, match=r"--local_mini_batch_size: "):  # the dashed spelling argparse also takes
        parse_args_and_config(parser, [*base, "--local-mini-batch-size", "8"])
    yaml = tmp_path / "config.yaml"
    yaml.write_text("sft_model_path: some/model\n")
    with pytest.raises(ValueError, match=r"--sft_model_path: .*model_name_or_path"):
        parse_args_and_config(parser, [*base, "--config", str(yaml)])
    with pytest.raises(ValueError, match="not used by the HfArgumentParser") as info:
        parse_args_and_config(parser, [*base, "--no_such_flag", "1"])
    assert GUIDE not in str(info.value)
    (args,) = parse_args_and_config(parser, [*base, "--kl_coef", "0.2", "--temperature", "0.7"])
    assert args.beta == 0.2 and args.temperature == 0.7


# ------------------------------------------------------------------------------------------------ metrics, links
def test_metric_names_the_guide_maps_to_are_logged():
    """Each reft-trl metric name in the table is written by ReFTTrainer (its metrics module), TRL's GRPOTrainer or the
    Trainer."""
    import transformers.trainer
    import trl.trainer.grpo_trainer

    sources = "".join(
        path.read_text()
        for path in (
            REPO_ROOT / "src/reft_trl/trainers/reft_trainer.py",
            REPO_ROOT / "src/reft_trl/trainers/ppo_metrics.py",
            REPO_ROOT / "src/reft_trl/trainers/rollout.py",
            Path(trl.trainer.grpo_trainer.__file__),
            Path(transformers.trainer.__file__),
        )
    )
    for name, (ours, _notes) in table("Metrics").items():
        if ours == "none":
            continue
        for metric in re.findall(r"`([^`]+)`", ours):
            assert f'"{metric}"' in sources, f"{name} -> {metric}: no code logs {metric!r}"


def test_links_inside_the_guide_resolve():
    anchors = {slug(heading) for heading in sections()}
    broken = [link for link in re.findall(r"\]\(#([^)]+)\)", TEXT) if link not in anchors]
    assert not broken, broken
    assert {section for section, _ in NOT_TAKEN.values()} <= anchors


def test_readme_points_to_the_guide():
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.index("## Quick start")
    assert GUIDE in readme[:quick_start], "the pointer belongs above the quick start"
