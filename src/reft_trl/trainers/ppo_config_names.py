"""TRL <= 1.12's ``PPOConfig`` names: the ones reft-trl takes as aliases of a ``GRPOConfig`` field, and the ones it
does not take, with what to use instead. The one home of the 1.12 names in the code.

``ReFTConfig`` takes the 1.12 names that mean the same thing here: :data:`ALIASES` of GRPOConfig fields
(``kl_coef`` = ``beta``, ...), and fields of its own under their 1.12 names (``num_mini_batches``, ``vf_coef``,
``cliprange_value``, ...; the full mapping is the migration guide, ``docs/migrating-from-trl-ppo.md``). The others
(:data:`NOT_TAKEN`) have no one-to-one equivalent: passing one raises a ``TypeError`` that
names it, says what to use instead and links the guide's section. They are deliberately **not** dataclass fields
(a field only to refuse it would show up in ``--help`` and collide with script arguments of the same name, such as
``recipes/ppo.py``'s ``--reward_model_path``): ``ReFTConfig.__new__`` checks the keyword arguments, and
:func:`parse_args_and_config` gives the same pointer on the command line.
"""

from __future__ import annotations

import dataclasses
import logging
import re

logger = logging.getLogger(__name__)

GUIDE = "docs/migrating-from-trl-ppo.md"

ALIASES = {
    "kl_coef": "beta",
    "cliprange": "epsilon",
    "num_ppo_epochs": "num_iterations",
    "response_length": "max_completion_length",
}
"""1.12 ``PPOConfig`` name -> the ``GRPOConfig`` field that carries its value (both names are accepted)."""

_FIELDS = "ppoconfig-fields"
_BATCH = "batch-sizes-and-training-length"
_EOS = "stopping-at-eos"
_PEFT = "peft-adapters"
_ROLLOUT_BATCH = "generation_batch_size / world_size (per_device_train_batch_size * steps_per_generation)"

# 1.12 field -> (section of the guide, what to use instead). Every other 1.12 field is a ReFTConfig field.
NOT_TAKEN: dict[str, tuple[str, str]] = {
    "total_episodes": (
        _BATCH,
        "set max_steps = ceil(total_episodes / generation_batch_size) * num_ppo_epochs * num_mini_batches (a step "
        "here is an optimizer step, not a rollout), or num_train_epochs",
    ),
    "num_total_batches": (
        _BATCH,
        "it was computed (rollouts in the run); here rollouts = max_steps / (num_ppo_epochs * num_mini_batches)",
    ),
    "world_size": (_BATCH, "it is computed: read args.world_size (the number of processes) after construction"),
    "micro_batch_size": (_BATCH, "it was computed: per_device_train_batch_size * world_size"),
    "local_batch_size": (_BATCH, "it was computed (completions per process and rollout): here " + _ROLLOUT_BATCH),
    "batch_size": (_BATCH, "it was computed (completions per rollout, all processes): here generation_batch_size"),
    "local_mini_batch_size": (
        _BATCH,
        "it was computed (completions per process and optimizer step): here per_device_train_batch_size * "
        "gradient_accumulation_steps",
    ),
    "mini_batch_size": (
        _BATCH,
        "it was computed (completions per optimizer step, all processes): here per_device_train_batch_size * "
        "gradient_accumulation_steps * world_size",
    ),
    "local_rollout_forward_batch_size": (
        _BATCH,
        "remove it: the rollout's no-grad forwards (old log-probs and values, reference) run in chunks of "
        "per_device_train_batch_size",
    ),
    "stop_token": (
        _EOS,
        "remove it: generation always stops at EOS (1.12's stop_token='eos'), at every id of the model's "
        "generation_config.eos_token_id and the tokenizer's EOS",
    ),
    "stop_token_id": (
        _EOS,
        "add the id to the model's generation_config.eos_token_id (TRL stops and masks at each of those ids)",
    ),
    "sft_model_path": (_FIELDS, "pass the checkpoint as ReFTTrainer(model=...) (recipes: --model_name_or_path)"),
    "reward_model_path": (
        _FIELDS,
        "pass the reward model as ReFTTrainer(reward_funcs=...) (recipes/ppo.py: --reward_model_path)",
    ),
    "num_sample_generations": (
        _FIELDS,
        "set log_completions=True (and num_completions_to_print) to log sampled completions at every logging step",
    ),
    "dataset_num_proc": (
        _FIELDS,
        "remove it: prompts are not tokenized beforehand (TRL tokenizes each batch); for your own preprocessing, "
        "pass num_proc to datasets.Dataset.map",
    ),
    "model_adapter_name": (
        _PEFT,
        "pass peft_config=...: the policy trains the one adapter TRL creates; multi-adapter models are not supported",
    ),
    "ref_adapter_name": (
        _PEFT,
        "remove it: with peft_config the reference is the policy with its adapter disabled; a separate reference "
        "adapter is not supported",
    ),
}


OLDER_FIELDS: dict[str, tuple[str, str]] = {
    "exp_name": (
        _FIELDS,
        "set run_name (exp_name built the default run_name in PPOConfig until TRL 0.28 removed it; 1.12's "
        "PPOConfig has no exp_name)",
    ),
}
"""Fields of ``PPOConfig`` releases before 1.12 that a migrating script may still carry, refused the same way."""

TRAINER_ARGUMENTS: dict[str, tuple[str, str]] = {
    "ref_model": (
        "ppotrainer-arguments",
        "remove it: TRL builds the reference itself, a frozen copy of the checkpoint given as model= (with "
        "peft_config, the policy with its adapter disabled); kl_coef=0 builds none",
    ),
    "reward_model": (
        "reward-models",
        "pass it as reward_funcs= (a path or a loaded one-label AutoModelForSequenceClassification; "
        "reward_processing_classes= for its tokenizer)",
    ),
    "value_model": (
        "the-value-model",
        "remove it: ReFTConfig(value_model='shared') (the default) trains a value head on the policy's trunk; "
        "value_model='separate' with value_model_path=<reward model> trains 1.12's separate critic",
    ),
    "data_collator": (
        "ppotrainer-arguments",
        "remove it: the dataset keeps its untokenized 'prompt' column, and TRL tokenizes and left-pads each "
        "rollout's prompts itself",
    ),
    # the same trainer in trl 0.x (PPOv2Trainer) and the step-based PPOTrainer of trl <= 0.11
    "policy": ("ppotrainer-arguments", "pass the policy as model= (a checkpoint path, or a loaded model)"),
    "ref_policy": ("ppotrainer-arguments", "remove it: TRL builds the reference itself from model="),
    "tokenizer": ("ppotrainer-arguments", "pass it as processing_class="),
    "config": ("ppotrainer-arguments", "pass args=ReFTConfig(...)"),
}
"""``PPOTrainer.__init__`` arguments (1.12's, and their older spellings) that ``ReFTTrainer`` does not take, with
what to pass instead: a ``TypeError`` with the guide's section instead of a run that fails later for another
reason (``reward_model=rm`` used to end in "rows cannot be scored ... no gold answer")."""


def pointer(name: str) -> str:
    """Why ``name`` (a 1.12 PPOConfig field, or an older one) is not taken, what to use instead, and the guide's
    section."""
    older = name in OLDER_FIELDS
    section, instead = (OLDER_FIELDS if older else NOT_TAKEN)[name]
    release = "TRL's older PPOConfig" if older else "TRL <= 1.12's PPOConfig"
    return f"{name} is a field of {release} that reft-trl does not take: {instead}. See {GUIDE}#{section}."


def refuse(cls, kwargs) -> None:
    """Raise ``TypeError`` when ``kwargs`` holds a 1.12 (or older) PPOConfig name that ``cls`` has no field for."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    names = [name for name in kwargs if (name in NOT_TAKEN or name in OLDER_FIELDS) and name not in fields]
    if names:
        raise TypeError(
            f"{cls.__name__}.__init__() got an unexpected keyword argument {names[0]!r}. "
            + " ".join(pointer(name) for name in names)
        )


def refuse_trainer_arguments(trainer: str, kwargs) -> None:
    """Raise ``TypeError`` when ``kwargs`` (a trainer's keyword arguments) holds a ``PPOTrainer`` argument of
    :data:`TRAINER_ARGUMENTS`."""
    names = [name for name in kwargs if name in TRAINER_ARGUMENTS]
    if names:
        raise TypeError(
            f"{trainer}.__init__() got an unexpected keyword argument {names[0]!r}. "
            + " ".join(
                f"{name} is an argument of TRL's PPOTrainer that {trainer} does not take: "
                f"{TRAINER_ARGUMENTS[name][1]}. See {GUIDE}#{TRAINER_ARGUMENTS[name][0]}."
                for name in names
            )
        )


def names_in(text: str) -> list[str]:
    """The 1.12 (or older) PPOConfig names that ``text`` (a parser's unknown-argument error) mentions as ``--name``
    (or ``--na-me``, the dashed spelling HfArgumentParser also accepts)."""
    return [
        name for name in [*NOT_TAKEN, *OLDER_FIELDS] if re.search(rf"--{name.replace('_', '[-_]')}(?![\w-])", text)
    ]


def parse_args_and_config(parser, args=None, *, unused_config_keys: set[str] = frozenset()):
    """``parser.parse_args_and_config(args)`` (a ``trl.TrlParser``), with the migration guide's pointer when an unknown
    argument, on the command line or in the ``--config`` YAML, is a 1.12 PPOConfig name the parser does not know.

    ``unused_config_keys``: keys the ``--config`` YAML may hold although the parser has no field for them (Online-ST
    reads ReFT's configs and leaves their PPO settings out); they are logged as unused, never taken from the command
    line."""
    try:
        if not unused_config_keys:
            return parser.parse_args_and_config(args)
        *parsed, config_rest, cli_rest = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as err:
        raise _with_pointers(err) from err
    keys = config_rest[0::2]
    unknown = [
        f"{key}={value}" for key, value in zip(keys, config_rest[1::2]) if key.lstrip("-") not in unused_config_keys
    ]
    if unknown or cli_rest:
        raise _with_pointers(
            ValueError(f"Unknown arguments: {unknown + cli_rest} (config file: {unknown}, command line: {cli_rest}).")
        )
    if keys:
        logger.warning("Not used here, from the config file: %s.", ", ".join(k.lstrip("-") for k in keys))
    return tuple(parsed)


def _with_pointers(err: ValueError) -> ValueError:
    names = names_in(str(err))
    if not names:
        return err
    return ValueError(f"{err}\n" + "\n".join(f"--{name}: {pointer(name)}" for name in names))
