"""docs/migrating-from-trl-ppo.md covers every name of TRL 1.12's PPO API, and ReFTConfig does what it says.

The 1.12 names below are data copied from TRL 1.12.0's ``PPOConfig``, ``PPOTrainer.__init__`` and the metrics its
``train`` logs (``shared/docs/trl-ppo-1.12-api.md``), kept independent of the code's own table
(``reft_trl.trainers.ppo_config_names.NOT_TAKEN``), so a name the guide or the code forgets makes a test fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, assert_deployable
from trl import TrlParser

from reft_trl.trainers import OnlineSTConfig, ReFTConfig
from reft_trl.trainers.ppo_config_names import GUIDE, NOT_TAKEN, TRAINER_ARGUMENTS, parse_args_and_config

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


# ------------------------------------------------------------------------------ a 1.12 user's first hour
def guide_block(section: str, marker: str) -> str:
    """The ```python block of ``section`` that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", sections()[section], flags=re.S)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"{GUIDE}, section {section!r}: {len(found)} python blocks contain {marker!r}"
    return found[0]


def on_fake_hub(cache: Path, repo_id: str, folder: Path) -> None:
    """Put ``folder`` in a Hugging Face cache (``HF_HUB_CACHE``) as ``repo_id``'s main revision: with
    ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id)`` loads it through the real hub code path."""
    import shutil

    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(folder, root / "snapshots" / commit)


@pytest.mark.slow
def test_the_guides_ppo_py_runs_as_written(tmp_path):
    """The guide's rewritten ``ppo.py`` (its Python block, as written) runs end to end on CPU: tiny local models
    stand in for the hub ids it names (a Llama whose embedding has exactly len(tokenizer) rows, a tokenizer without a
    pad token, like pythia's), the dataset for the hub dataset it loads; the only edits are 3 steps instead of 79 and
    this machine's settings (CPU, fp32, no report_to)."""
    import json
    import os
    import subprocess
    import sys

    from datasets import Dataset
    from safetensors.torch import load_file

    from reft_trl.models.tiny import char_tokenizer, save_tiny_llama

    block = guide_block("Example: descriptiveness-sentiment (`ppo.py`)", "from reft_trl import")
    edits = {
        "max_steps=79,": "max_steps=3,",
        "args = ReFTConfig(\n": "args = ReFTConfig(\n    use_cpu=True, bf16=False, report_to='none', logging_steps=1,\n",
    }
    for old, new in edits.items():
        assert block.count(old) == 1, f"the guide's ppo.py block no longer has {old!r}: update this test's edits"
        block = block.replace(old, new)
    hub_ids = set(re.findall(r'"(EleutherAI/[\w.-]+)"', block))
    assert hub_ids == {"EleutherAI/pythia-1b-deduped"}, hub_ids

    tokenizer = char_tokenizer()
    tokenizer.pad_token = None  # pythia's tokenizer has none: TRL pads with EOS
    save_tiny_llama(tmp_path / "tiny", tokenizer, seed=0)
    cache = tmp_path / "hub"
    on_fake_hub(cache, "EleutherAI/pythia-1b-deduped", tmp_path / "tiny")
    prompts = [f"Describe the number {i} in one word:" for i in range(116)]  # 16 to train on, 100 to evaluate
    Dataset.from_dict({"prompt": prompts}).save_to_disk(str(tmp_path / "descriptiveness"))
    prelude = (
        "import datasets\n"
        f"_rows = datasets.load_from_disk({str(tmp_path / 'descriptiveness')!r})\n"
        "def _load_dataset(path, name=None, split=None, **kwargs):\n"
        "    assert (path, split) == ('trl-internal-testing/descriptiveness-sentiment-trl-style', 'descriptiveness')\n"
        "    return _rows\n"
        "datasets.load_dataset = _load_dataset\n"
    )
    epilogue = "\nimport json\njson.dump(trainer.state.log_history, open('log_history.json', 'w'))\n"
    (tmp_path / "ppo.py").write_text(prelude + block + epilogue)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "ppo.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-4000:]

    logs = [entry for entry in json.loads((tmp_path / "log_history.json").read_text()) if "loss/value" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3]
    assert all(entry["objective/kl_coef"] == 0.05 and "rewards/pythia-1b-deduped/mean" in entry for entry in logs)
    assert logs[0]["learning_rate"] == pytest.approx(3e-6) and logs[-1]["learning_rate"] < 3e-6  # linear decay
    out = tmp_path / "pythia-1b-deduped-descriptiveness-sentiment-ppo"
    assert_deployable(out, value_model="separate")
    start, trained = load_file(tmp_path / "tiny" / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(start[name], trained[name]) for name in start), "the policy did not change"


def _prompts(n=8, **columns):
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [f"Q: {i} + 1 = ?\nA:" for i in range(n)], **columns})


def _trainer(tiny_checkpoint, tmp_path, **kwargs):
    from conftest import cpu_trainer_settings

    from reft_trl.trainers import ReFTTrainer

    kwargs.setdefault("train_dataset", _prompts())
    kwargs.setdefault("args", ReFTConfig(**cpu_trainer_settings(tmp_path / "out", max_completion_length=8)))
    return ReFTTrainer(model=tiny_checkpoint, **kwargs)


def _zero(completions, **kwargs):
    return [0.0] * len(completions)


TRAINER_ARGUMENT_ROWS = table("`PPOTrainer` arguments")


@pytest.mark.parametrize("name", sorted(TRAINER_ARGUMENTS))
def test_leftover_ppo_trainer_arguments_point_to_the_guide(tiny_checkpoint, tmp_path, name):
    """1.12's ref_model/reward_model/value_model/data_collator (and trl 0.x's policy, ref_policy, tokenizer, config):
    a TypeError naming the argument, what to pass instead, and a section of the guide -- before anything is loaded
    (reward_model=rm used to end in '40 of 40 rows cannot be scored ... no gold answer')."""
    with pytest.raises(
        TypeError, match=rf"unexpected keyword argument '{name}'\. {name} is an argument of TRL's "
    ) as info:
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, **{name: object()})
    anchor = re.search(rf"{re.escape(GUIDE)}#([\w-]+)", str(info.value))
    assert anchor and anchor.group(1) in {slug(heading) for heading in sections()}, str(info.value)


def test_the_guide_marks_the_refused_trainer_arguments():
    marked = {name for name, (cell,) in TRAINER_ARGUMENT_ROWS.items() if cell.startswith("**TypeError**")}
    assert (
        marked
        == set(TRAINER_ARGUMENTS) & set(PPO_TRAINER_ARGS)
        == {
            "ref_model",
            "reward_model",
            "value_model",
            "data_collator",
        }
    )


def test_exp_name_is_refused_with_the_pointer(tmp_path):
    """exp_name was removed from PPOConfig in TRL 0.28 (1.12 has none): a script that still sets it is told to use
    run_name, in Python and on the command line."""
    with pytest.raises(TypeError, match=rf"exp_name .*run_name.*TRL 0\.28.*{re.escape(GUIDE)}#ppoconfig-fields"):
        config(tmp_path, exp_name="my-run")
    parser = TrlParser((ReFTConfig,))
    with pytest.raises(ValueError, match=r"--exp_name: .*run_name"):
        parse_args_and_config(parser, ["--output_dir", str(tmp_path), "--use_cpu", "--exp_name", "x"])


def test_a_pad_token_without_an_embedding_is_refused_before_step_0(tiny_checkpoint, tmp_path):
    """The guide's old step tokenizer.add_special_tokens({'pad_token': '[PAD]'}) on a model whose embedding has
    exactly len(tokenizer) rows: TRL's generate would fail at step 0 with 'IndexError: index out of range in self'.
    The trainer refuses it at construction, naming the token, for the policy and for a reward model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, padding_side="left")
    rows = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    with pytest.raises(
        ValueError,
        match=rf"policy has {rows + 1} tokens but its input embedding has {rows} rows.*'\[PAD\]' = {rows}.*pad token",
    ):
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, processing_class=tokenizer)
    with pytest.raises(
        ValueError, match=rf"reward model '[\w-]+' has {rows + 1} tokens but its input embedding has {rows} rows"
    ):
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=tiny_checkpoint, reward_processing_classes=tokenizer)
    # what the guide says instead (no pad token: TRL pads with EOS) trains
    plain = AutoTokenizer.from_pretrained(tiny_checkpoint, padding_side="left")
    plain.pad_token = None
    trainer = _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, processing_class=plain)
    assert trainer.processing_class.pad_token == plain.eos_token
    trainer.train()
    assert trainer.state.global_step == 2


def test_no_reward_source_is_grpo_trainers_error_with_the_columns(tiny_checkpoint, tmp_path):
    """Without reward_funcs, on rows the default answer reward cannot grade (no 'answer' column): GRPOTrainer's own
    'No reward source provided' error (the text TRL's test_no_reward_source_raises matches), then what was tried."""
    from conftest import cpu_trainer_settings
    from trl import GRPOConfig, GRPOTrainer

    with pytest.raises(ValueError) as trl_error:
        GRPOTrainer(
            model=tiny_checkpoint,
            args=GRPOConfig(**cpu_trainer_settings(tmp_path / "grpo"), num_generations=2),
            train_dataset=_prompts(),
        )
    with pytest.raises(ValueError) as ours:
        _trainer(tiny_checkpoint, tmp_path, train_dataset=_prompts(label=[1] * 8))
    message = str(ours.value)
    assert str(trl_error.value).startswith("No reward source provided.")
    assert message.startswith(str(trl_error.value))
    assert "AnswerReward" in message and "'answer' column" in message and "['prompt', 'label']" in message


def test_a_messages_only_dataset_gets_the_prompt_hint(tiny_checkpoint, tmp_path):
    from datasets import Dataset

    conversations = [
        [{"role": "user", "content": f"{i} + 1?"}, {"role": "assistant", "content": str(i + 1)}] for i in range(8)
    ]
    dataset = Dataset.from_dict({"messages": conversations})
    with pytest.raises(
        ValueError, match=r"no 'prompt' column \(its columns: \['messages'\]\).*row\['messages'\]\[:-1\]"
    ):
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, train_dataset=dataset)
    # the hint, as the guide writes it, gives a dataset the trainer takes
    fixed = dataset.map(lambda row: {"prompt": row["messages"][:-1]}, remove_columns=["messages"])
    assert fixed[0]["prompt"] == [{"role": "user", "content": "0 + 1?"}]
    _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, train_dataset=fixed)
    with pytest.raises(ValueError, match="drop the tokenization step"):
        _trainer(
            tiny_checkpoint, tmp_path, reward_funcs=_zero, train_dataset=Dataset.from_dict({"input_ids": [[1, 2]] * 8})
        )


def test_an_eval_dataset_without_eval_strategy_is_reported_unused(tiny_checkpoint, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="reft_trl.trainers.rollout"):
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero, eval_dataset=_prompts())
    assert "eval_dataset is given but eval_strategy='no': it is not used" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reft_trl.trainers.rollout"):
        _trainer(tiny_checkpoint, tmp_path, reward_funcs=_zero)
    assert "eval_dataset" not in caplog.text
