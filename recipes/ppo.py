"""PPO on any TRL prompt dataset with reward models and/or reward functions: what TRL <= 1.12's
`examples/scripts/ppo/ppo.py` and `ppo_tldr.py` did, on ReFTTrainer (TRL 1.13 deleted PPOTrainer).

    accelerate launch recipes/ppo.py --config recipes/configs/ppo/tldr.yaml \
        [--model_name_or_path SFT] [--reward_model_path RM [RM ...]] [--reward_funcs NAME [NAME ...]] \
        [--dataset_name ID_OR_LOCAL_PATH] [--dataset_config C] [--dataset_train_split train] \
        [--dataset_test_split validation] [--use_peft --lora_r 16 ...] [--use_vllm true ...]

Every ReFTConfig field (TRL 1.12's PPOConfig names too: kl_coef, cliprange, num_ppo_epochs, num_mini_batches,
response_length, vf_coef, cliprange_value, gamma, lam, whiten_rewards, missing_eos_penalty, kl_estimator) and
ModelConfig flag (PEFT/LoRA, dtype, quantization) is a flag or a YAML key.

Data (`--dataset_name`): rows with a `prompt` column, standard (strings) or conversational (message lists); every
other column is passed to the reward functions by name, as TRL does. It is a hub id (`load_dataset(id,
dataset_config)`) or a local path:
  * a `.json` / `.jsonl` / `.parquet` file: the training split (whatever `--dataset_train_split` names);
  * a folder saved with `Dataset.save_to_disk` (the training split) or `DatasetDict.save_to_disk` (its splits);
  * any other folder: each `<split>.json` / `.jsonl` / `.parquet` file in it is the split `<split>`.
With `eval_strategy` set, `--dataset_test_split` is evaluated (TRL's generate-and-score evaluation: `eval_*` metrics).

Rewards: at least one of
  * `--reward_model_path RM [RM ...]`: sequence-classification reward models (TRL loads each with
    `AutoModelForSequenceClassification.from_pretrained(RM, num_labels=1)`; each reads prompt + completion as TRL's
    RewardTrainer trained it -- + EOS when the completion ended, the RM tokenizer's special tokens -- and its
    `logits[:, 0]` at the last non-pad token is the score; `--reward_model_tokenization grpo_trainer` for RMs
    trained on GRPOTrainer's decoded text);
  * `--reward_funcs NAME [NAME ...]`: `answer` (reft_trl.rewards.AnswerReward on the `answer` column, ReFT's
    reward), a reward function of `trl.rewards` by name (`accuracy_reward`, `think_format_reward`, ...), or your own
    as `module.path:function` (or TRL's `module.path.function`; the working directory is importable).
`reward_weights` (a ReFTConfig field) weighs them in this order: the reward models first, then the functions. The
PPO score of a completion is the weighted sum (`objective/scores`; each reward alone: `rewards/<name>/mean`).

Tokenizer: the policy's, padded on the left with pad = EOS when it has none (recipes/_common.py: load_tokenizer).
Unlike TRL 1.12's scripts, no `[PAD]` token is added (TRL's rollout masks by length, so pad = EOS is safe and the
embeddings are never resized; a tokenizer with ids the model has no embedding for is refused before step 0, as in
docs/migrating-from-trl-ppo.md) and no chat template is invented: conversational prompts need a tokenizer (and reward
model tokenizers) with a chat template. 1.12's `--stop_token eos` is the behaviour here: generation stops at EOS.
The value function is the shared-trunk value head of ReFT (`value_model: shared`); 1.12 trained a separate value
model initialised from the reward model: `--value_model separate --value_model_path RM` does that (no PEFT).
A reward model with several labels is refused (TRL would read its first logit); score it from Python with
`reft_trl.RewardModel(path, label=...)` in your own script, or `--reward_funcs module.path:function`.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _common import load_tokenizer, train
from trl import ModelConfig, ScriptArguments, TrlParser, get_quantization_config, is_conversational

from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.ppo_config_names import parse_args_and_config

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
REFT_REWARDS = ("answer",)


@dataclass
class PPOScriptArguments(ScriptArguments):
    """TRL's ScriptArguments (dataset_name, dataset_config, dataset_train_split, dataset_test_split,
    dataset_streaming) plus the rewards."""

    reward_model_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Sequence-classification reward model(s): hub ids or local folders, loaded by TRL with "
            "num_labels=1. Weighed first by reward_weights."
        },
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward function(s): 'answer' (reft_trl.rewards.AnswerReward on the `answer` column), a name "
            "from trl.rewards (e.g. accuracy_reward, think_format_reward), or 'module.path:function'. Weighed after "
            "the reward models by reward_weights."
        },
    )

    def __post_init__(self):
        # A YAML scalar (`reward_model_path: RM`) arrives as a string, not a one-item list.
        for name in ("reward_model_path", "reward_funcs"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])


# ----------------------------------------------------------------------------------------------------- rewards
def trl_reward_names() -> list[str]:
    """The reward functions of ``trl.rewards`` usable by name: its public callables that are not factories
    (``get_*`` functions need arguments; wrap them in your own module and pass ``module:function``)."""
    import trl.rewards

    return [
        name
        for name in trl.rewards.__all__
        if not name.startswith("get_") and not name.endswith("_rewards") and callable(getattr(trl.rewards, name))
    ]


def reward_function(name: str, training_args: ReFTConfig):
    """The reward callable called ``name`` (see ``PPOScriptArguments.reward_funcs``)."""
    if name == "answer":
        return ReFTTrainer.default_reward(training_args)  # what ReFTTrainer uses when it is given no reward
    trl_names = trl_reward_names()
    if name in trl_names:
        import trl.rewards

        return getattr(trl.rewards, name)
    if ":" in name or "." in name:
        module_path, _, func_name = name.rpartition(":") if ":" in name else name.rpartition(".")
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as TRL's grpo.py: the user's own modules beside the launch
        module = importlib.import_module(module_path)
        if not hasattr(module, func_name):
            raise ValueError(f"Reward function {name!r}: module {module_path!r} has no attribute {func_name!r}.")
        return getattr(module, func_name)
    raise ValueError(
        f"Unknown reward function {name!r}. Expected one of {[*REFT_REWARDS, *trl_names]} or an import path "
        "'module.path:function'."
    )


def reward_functions(script_args: PPOScriptArguments, training_args: ReFTConfig) -> list:
    """The trainer's ``reward_funcs``: the reward model paths (strings: TRL loads them), then the functions."""
    funcs = list(script_args.reward_model_path or [])
    funcs += [reward_function(name, training_args) for name in script_args.reward_funcs or []]
    if not funcs:
        raise ValueError(
            "PPO needs a reward: pass --reward_model_path RM [RM ...] and/or --reward_funcs NAME [NAME ...] "
            f"(NAME: one of {[*REFT_REWARDS, *trl_reward_names()]} or 'module.path:function')."
        )
    return funcs


# ----------------------------------------------------------------------------------------------------- dataset
def load_prompt_dataset(script_args: PPOScriptArguments):
    """``--dataset_name`` as a ``DatasetDict`` (``IterableDatasetDict`` when streaming): a hub id or a local path
    (see the module's docstring)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    name, streaming = script_args.dataset_name, script_args.dataset_streaming
    if not name:
        raise ValueError("No dataset: pass --dataset_name (a hub id, a .jsonl/.json/.parquet file or a folder).")
    path = Path(name)
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise ValueError(f"{name}: unsupported data file; expected one of {sorted(DATA_FILE_BUILDERS)}.")
        files = {script_args.dataset_train_split: str(path)}
        return load_dataset(builder, data_files=files, streaming=streaming)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            dataset = load_from_disk(str(path))
            return (
                dataset
                if isinstance(dataset, DatasetDict)
                else DatasetDict({script_args.dataset_train_split: dataset})
            )
        files = sorted(p for p in path.iterdir() if p.suffix in DATA_FILE_BUILDERS)
        builders = {DATA_FILE_BUILDERS[p.suffix] for p in files}
        if len(builders) != 1 or len({p.stem for p in files}) != len(files):
            raise ValueError(
                f"{name}: expected <split>.jsonl (or .json / .parquet: one format, one file per split) files or a "
                f"folder written by save_to_disk, found {[p.name for p in path.iterdir()]}."
            )
        return load_dataset(builders.pop(), data_files={p.stem: str(p) for p in files}, streaming=streaming)
    return load_dataset(name, name=script_args.dataset_config, streaming=streaming)


def prompt_split(dataset, split: str, dataset_name: str, what: str):
    """``dataset[split]``, checked: the split exists and has a ``prompt`` column."""
    if split not in dataset:
        raise ValueError(
            f"Dataset {dataset_name!r} has no split {split!r} for {what} (splits: {list(dataset)}). Pass "
            f"--dataset_{'train' if what == 'training' else 'test'}_split"
            + ("" if what == "training" else ", or --eval_strategy no")
            + "."
        )
    rows = dataset[split]
    columns = rows.column_names
    if columns is not None and "prompt" not in columns:
        raise ValueError(
            f"Dataset {dataset_name!r} (split {split!r}) has no 'prompt' column; its columns are {columns}. PPO "
            "samples completions of each row's `prompt` (a string, or a list of chat messages)."
        )
    return rows


def main(script_args: PPOScriptArguments, training_args: ReFTConfig, model_args: ModelConfig):
    reward_funcs = reward_functions(script_args, training_args)
    dataset = load_prompt_dataset(script_args)
    name = script_args.dataset_name
    train_dataset = prompt_split(dataset, script_args.dataset_train_split, name, "training")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = prompt_split(dataset, script_args.dataset_test_split, name, "evaluation")

    tokenizer = load_tokenizer(model_args, training_args)
    first = next(iter(train_dataset), None)  # an empty dataset is the trainer's error to report
    if first is not None and is_conversational(first) and tokenizer.chat_template is None:
        raise ValueError(
            f"Dataset {name!r} has conversational prompts but the tokenizer of {model_args.model_name_or_path} has "
            "no chat template: use a model whose tokenizer has one (its chat_template), or plain-text prompts."
        )
    return train(
        ReFTTrainer,
        None,
        training_args,
        model_args,
        train_dataset,
        tokenizer=tokenizer,
        reward_funcs=reward_funcs,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
    )


def make_parser() -> TrlParser:
    return TrlParser((PPOScriptArguments, ReFTConfig, ModelConfig))


if __name__ == "__main__":
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    # a TRL <= 1.12 PPOConfig name it does not know gets a pointer to docs/migrating-from-trl-ppo.md
    main(*parse_args_and_config(make_parser())).accelerator.end_training()
