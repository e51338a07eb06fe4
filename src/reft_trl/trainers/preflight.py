"""Checks before step 0: what would make a rollout trainer fail at its first step, or train on nothing and exit
successfully, refused at construction with what to do. :class:`~reft_trl.trainers.rollout.RolloutTrainer` calls
them (ReFT and Online-ST alike); each names the problem (the row, the field, the value) and how many there are.

* :func:`check_default_reward_applies`: without ``reward_funcs``, rows the default answer reward cannot grade are
  ``GRPOTrainer``'s "No reward source provided" error, plus what was tried.
* :func:`check_train_dataset`: no ``prompt`` column, an empty or too small dataset, rows a reward cannot score.
* :func:`check_vocabulary`: a tokenizer with ids its model has no embedding for (TRL 1.12's ``[PAD]`` step).
* :func:`check_prompt_lengths`: prompts that leave no room for the completion in the model's context.
* :func:`check_engine`: engine setups that cannot give plain, resumable model folders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from reft_trl.trainers.fsdp_cpu import fsdp_launch
from reft_trl.trainers.ppo_config_names import GUIDE

logger = logging.getLogger(__name__)

MAX_REPORTED_ROWS = 10
"""How many bad rows a check lists (it always says how many there are in all)."""


def check_default_reward_applies(dataset, trainer: str) -> None:
    """Without ``reward_funcs`` the trainer uses its default reward, :class:`reft_trl.rewards.AnswerReward`, which
    grades against each row's gold ``answer``: a dataset without that column has no reward source, and gets
    ``GRPOTrainer``'s own error for that (its text first: TRL's ``test_no_reward_source_raises`` matches it), saying
    what was tried and which columns it needs. Datasets that do not list their columns are not checked."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or "answer" in columns:
        return
    raise ValueError(
        "No reward source provided. Pass `reward_funcs`, or an `environment_factory` whose environment defines "
        f"a `get_reward` method. ({trainer} tried its default reward, reft_trl.rewards.AnswerReward, which grades "
        "each completion's final answer against the row's gold answer: it needs an 'answer' column (and optionally "
        f"'answer_format' and 'cot'); train_dataset's columns are {list(columns)}.)"
    )


def prompt_hint(columns: Sequence[str]) -> str:
    """How to give a dataset with ``columns`` the ``prompt`` column a rollout samples from."""
    hint = "The trainer samples a completion for each row's 'prompt' (a string, or a list of chat messages)"
    if "messages" in columns:
        return (
            f"{hint}: for a conversation in 'messages', the prompt is the conversation without its last (assistant) "
            "turn: dataset = dataset.map(lambda row: {'prompt': row['messages'][:-1]}, remove_columns=['messages'])."
        )
    if "input_ids" in columns:
        return (
            f"{hint}, untokenized: drop the tokenization step (TRL <= 1.12's PPOTrainer wanted input_ids) and keep "
            f"the text column. See {GUIDE}#ppotrainer-arguments."
        )
    return hint + ": rename the column that holds it to 'prompt'."


def check_train_dataset(dataset, reward_funcs: list, args, *, environments: bool = False) -> None:
    """Refuse a training set that cannot train, before the model is copied or a step is run.

    * a dataset without a ``prompt`` column (unless an ``environment_factory`` supplies the prompts from its
      ``reset()``, TRL's own rule), with a hint for ``messages``-only and tokenized datasets (:func:`prompt_hint`);
    * an empty dataset, or fewer rows than the prompts of one rollout (``generation_batch_size /
      num_generations``, all processes together; ``args`` is the trainer's config): TRL's sampler drops incomplete
      rollouts, so training would run 0 steps and exit successfully;
    * rows a reward function cannot score, for every reward function with a ``validate_rows(rows)`` method (the
      default :class:`~reft_trl.rewards.AnswerReward` has one: gold answers its answer format cannot parse, unknown
      formats or cots, P-CoT prompts scored as N-CoT because the rows have no ``cot`` column): one ``ValueError``
      naming up to :data:`MAX_REPORTED_ROWS` rows by dataset index (and ``item_id``) and field, and how many there
      are in all. Otherwise a bad gold surfaced only when its row was sampled, with its position in a shuffled batch
      and no step.

    Datasets without a length (``IterableDataset``) are checked for their columns only.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is not None and "prompt" not in columns and not environments:
        raise ValueError(
            f"train_dataset has no 'prompt' column (its columns: {list(columns)}). " + prompt_hint(columns)
        )
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return
    n = len(dataset)
    if n == 0:
        raise ValueError(
            "train_dataset is empty: there is nothing to train on (TRL would run 0 steps and exit successfully)."
        )
    per_rollout = args.generation_batch_size // args.num_generations
    if n < per_rollout:
        raise ValueError(
            f"train_dataset has {n} rows, fewer than the {per_rollout} prompts of one rollout "
            f"(generation_batch_size={args.generation_batch_size} completions = per_device_train_batch_size "
            f"{args.per_device_train_batch_size} x {args.world_size} processes x steps_per_generation "
            f"{args.steps_per_generation}, with num_generations={args.num_generations} per prompt). TRL's sampler "
            "drops incomplete rollouts, so training would run 0 steps. Add rows or lower "
            "per_device_train_batch_size / steps_per_generation."
        )
    if n % per_rollout:
        logger.info(
            "train_dataset has %d rows and each rollout takes %d prompts: %d rows of each shuffled pass are not used.",
            n,
            per_rollout,
            n % per_rollout,
        )
    for func in reward_funcs:
        validate = getattr(func, "validate_rows", None)
        if not callable(validate):
            continue
        problems = validate(dataset)
        if problems:
            name = getattr(func, "__name__", type(func).__name__)
            shown = "\n  ".join(problems[:MAX_REPORTED_ROWS])
            raise ValueError(
                f"train_dataset: {len(problems)} of {n} rows cannot be scored by the reward function {name!r}; "
                f"nothing was trained. The first {min(len(problems), MAX_REPORTED_ROWS)}:\n  {shown}"
            )


def check_vocabulary(model, tokenizer, what: str) -> None:
    """Refuse a tokenizer with ids ``model`` has no input embedding for (``what`` names the model in the error).

    ``tokenizer.add_special_tokens({"pad_token": "[PAD]"})`` (TRL 1.12's examples) on a model whose embedding has
    exactly ``len(tokenizer)`` rows ends in ``IndexError: index out of range in self`` inside ``generate`` at step 0
    (1.12 survived it by replacing pad ids before every forward). A processor is checked through its text tokenizer,
    a DeepSpeed engine through its module; a model without ``get_input_embeddings`` is not checked."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    model = getattr(model, "module", model)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None or len(tokenizer) <= rows:
        return
    beyond = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= rows)
    shown = ", ".join(f"{t!r} = {i}" for i, t in beyond[:5]) + (" ..." if len(beyond) > 5 else "")
    pad = tokenizer.pad_token_id
    raise ValueError(
        f"The tokenizer of {what} has {len(tokenizer)} tokens but its input embedding has {rows} rows: "
        f"{len(beyond)} token id(s) have no embedding ({shown})"
        + (f", among them the pad token {tokenizer.pad_token!r}" if pad is not None and pad >= rows else "")
        + ". Generation or scoring would stop at step 0 with 'IndexError: index out of range in self'. Do not "
        "add a pad token (TRL 1.12's tokenizer.add_special_tokens({'pad_token': '[PAD]'})): without one TRL "
        "pads with EOS, masked by length, never trained on. Or resize the model first "
        "(model.resize_token_embeddings(len(tokenizer))) and save it, since the reference model is reloaded "
        f"from the checkpoint. See {GUIDE}#ppotrainer-arguments."
    )


def check_prompt_lengths(
    dataset,
    token_lengths: Callable[[list], list[int]],
    *,
    context: int,
    source: str,
    max_completion_length: int,
) -> None:
    """Refuse prompts that leave no room for ``max_completion_length`` tokens in the model's ``context`` (named
    ``source`` in the error: ``max_position_embeddings`` or ``vllm_max_model_length``).

    TRL 1.16 never truncates prompts (``GRPOConfig`` has no ``max_prompt_length``): every prompt is generated from in
    full, so a prompt with ``tokens + max_completion_length`` above the context would generate past it: an index
    error for learned position embeddings, positions never trained for rotary ones, a refused request in vLLM.
    ``token_lengths(prompts)`` gives the length of each prompt as the trainer tokenises it for generation."""
    columns = getattr(dataset, "column_names", None) or []
    budget = context - max_completion_length
    prompts = dataset["prompt"]
    too_long = []
    for start in range(0, len(prompts), 256):
        lengths = token_lengths(prompts[start : start + 256])
        too_long += [(start + i, length) for i, length in enumerate(lengths) if length > budget]
    if not too_long:
        return
    ids = dataset["item_id"] if "item_id" in columns else None
    shown = "\n  ".join(
        f"row {i}" + (f" (item_id {ids[i]})" if ids is not None else "") + f", field 'prompt': {length} tokens"
        for i, length in too_long[:MAX_REPORTED_ROWS]
    )
    raise ValueError(
        f"train_dataset: {len(too_long)} of {len(prompts)} prompts are longer than {budget} tokens, the model's "
        f"context ({source}={context}) minus max_completion_length={max_completion_length}. TRL does not truncate "
        "prompts, so generation would run past the context. Shorten or drop these prompts, or lower "
        f"max_completion_length. The first {min(len(too_long), MAX_REPORTED_ROWS)}:\n  {shown}"
    )


def check_engine(*, fsdp_enabled: bool, deepspeed_plugin, distributed_type, config_name: str) -> None:
    """Refuse engine setups that would train without the guarantees of every model folder (plain, resumable):

    * a process launched for FSDP (``ACCELERATE_USE_FSDP=true``) that accelerate did not set FSDP up for
      (``fsdp_enabled`` false; ``distributed_type`` is what it set up instead): the model would train unsharded;
    * DeepSpeed ZeRO-3 (``deepspeed_plugin``, None without DeepSpeed) without
      ``stage3_gather_16bit_weights_on_model_save``: transformers would save every model folder as DeepSpeed's
      partitions only (no plain policy, no ``value_model/``), and a ReFT checkpoint without ``value_model/`` is
      refused by ``resume_from_checkpoint``.

    ``config_name`` names the trainer's config class in the FSDP error."""
    if fsdp_launch() and not fsdp_enabled:
        raise ValueError(
            "This process was launched for FSDP (ACCELERATE_USE_FSDP=true) but accelerate set up "
            f"{distributed_type}, so the model would train unsharded. On CPU processes use "
            "recipes/accelerate/fsdp2_cpu.yaml (FSDP2, use_cpu: false) with a "
            f"{config_name}, which sets FSDP2 up over gloo."
        )
    zero = deepspeed_plugin.deepspeed_config.get("zero_optimization", {}) if deepspeed_plugin is not None else {}
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save", False):
        raise ValueError(
            "DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save: save_model and every checkpoint "
            "would hold only DeepSpeed's partitions (no plain policy folder, no value function in value_model/, "
            "so resume_from_checkpoint could not restore the value head from them). Set "
            "`stage3_gather_16bit_weights_on_model_save: true` in the DeepSpeed config's zero_optimization (in "
            "an accelerate config: `zero3_save_16bit_model: true`), as recipes/accelerate/zero3.yaml and "
            "zero3_cpu.json do."
        )


__all__ = [
    "MAX_REPORTED_ROWS",
    "check_engine",
    "check_default_reward_applies",
    "check_prompt_lengths",
    "check_train_dataset",
    "check_vocabulary",
    "prompt_hint",
]
