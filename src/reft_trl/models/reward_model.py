"""Sequence classifiers as rewards: one label's logit (or probability) of the text ``prompt + completion``.

TRL's GRPOTrainer already accepts a reward model in ``reward_funcs`` (a path or a ``PreTrainedModel``): it loads a
path with ``num_labels=1`` and reads ``logits[:, 0]``. That is right for a one-label reward model (RLHF) and silently
wrong for a classifier with several labels: for this project's ORM (label 1 = "correct") ``logits[:, 0]`` is the
"incorrect" logit, so PPO would learn to be wrong. :class:`RewardModel` says which label is the reward (an index or an
``id2label`` name) and whether the score is the logit or the label's probability; ``ReFTTrainer`` refuses a
multi-label classifier given without it (``check_reward_model``).

What a reward model reads (:func:`reward_model_texts`) follows TRL's ``RewardTrainer``, which trained it
(``tokenization="reward_trainer"``, the default of ``ReFTConfig.reward_model_tokenization``): for plain-text prompts
``prompt + completion + eos_token`` when the completion ended with EOS (nothing added to a truncated one), tokenized
with the reward tokenizer's special tokens (BOS where it adds one); conversations through its chat template.
``"grpo_trainer"`` is what ``GRPOTrainer`` feeds reward models: the decoded text, no EOS, no special tokens.

One scoring function, :func:`classifier_scores`, serves the reward models, this wrapper and the ORM's reranking
(:func:`reft_trl.trainers.orm.orm_scores`): text -> tokens (right padding, left truncation to ``max_length``) ->
``logits`` at the last non-pad token -> the chosen label's logit or probability.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TOKENIZATIONS",
    "RewardModel",
    "check_reward_model",
    "classifier_scores",
    "is_sequence_classifier",
    "resolve_label",
    "reward_model_texts",
]

TOKENIZATIONS = ("reward_trainer", "grpo_trainer")
"""How a reward model's input is built (``ReFTConfig.reward_model_tokenization``, ``RewardModel(tokenization=)``):
as TRL's ``RewardTrainer`` tokenizes its training texts, or as ``GRPOTrainer`` feeds reward models."""


def _num_labels(config) -> int:
    return int(getattr(config, "num_labels", 1))


def resolve_label(config, label: int | str | None, name: str) -> int:
    """The logit index of ``label`` (an index, or a name in ``config.id2label``) for the classifier ``name``.

    ``None`` is allowed only for a one-label model (its single logit); a multi-label classifier must be told which
    label is the reward."""
    n = _num_labels(config)
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    if label is None:
        if n == 1:
            return 0
        raise ValueError(
            f"Reward model {name} is a classifier with {n} labels ({id2label}); a reward needs one number per "
            "completion. Say which label is the reward: reft_trl.RewardModel(model, label=<index or name>) "
            "(probability=True for its softmax probability). Passed as a plain path or model, TRL would read "
            "logits[:, 0], the first label, whatever it means."
        )
    if isinstance(label, str):
        matches = [i for i, v in id2label.items() if v == label]
        if not matches:
            raise ValueError(f"Reward model {name} has no label named {label!r}; its labels are {id2label}.")
        return matches[0]
    if not 0 <= int(label) < n:
        raise ValueError(f"Reward model {name} has {n} labels ({id2label}); label={label} is out of range.")
    return int(label)


def is_sequence_classifier(model_or_config) -> bool:
    """Whether a model (by its class) or a checkpoint's config (by its ``architectures``) is a sequence classifier.
    A causal LM's config also says ``num_labels=2`` (transformers' default), which means nothing there."""
    if isinstance(model_or_config, nn.Module):
        names = [type(model_or_config).__name__]
    else:
        names = list(getattr(model_or_config, "architectures", None) or [])
    return any(name.endswith("ForSequenceClassification") for name in names)


def check_reward_model(reward_func, trust_remote_code: bool = False) -> None:
    """Refuse a reward model that TRL would score by ``logits[:, 0]`` although it is a classifier with several labels:
    a checkpoint path (TRL's ``num_labels=1`` load would fail on the score head's shape) or a ``PreTrainedModel``
    (TRL would silently reward the first label). A causal-LM checkpoint given as a path is what TRL 1.12's example
    did (a fresh one-label score head): allowed. A loaded causal LM is refused (its logits are per token)."""
    from transformers import AutoConfig, PreTrainedModel

    if isinstance(reward_func, (str, os.PathLike)):
        path = str(reward_func)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            return  # not loadable here: TRL's own from_pretrained reports it
        if is_sequence_classifier(config):
            resolve_label(config, None, path)
    elif isinstance(reward_func, PreTrainedModel):
        name = getattr(reward_func.config, "_name_or_path", "") or "(in memory)"
        if is_sequence_classifier(reward_func):
            resolve_label(reward_func.config, None, name)
        elif type(reward_func).__name__.endswith("ForCausalLM"):
            raise ValueError(
                f"Reward model {name} is a {type(reward_func).__name__}: its logits are per token, not one score per "
                "completion. Pass a sequence classifier (AutoModelForSequenceClassification), or the checkpoint's "
                "path (TRL then loads it with a fresh one-label score head)."
            )


@torch.no_grad()
def classifier_scores(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    label: int = 0,
    probability: bool = False,
    batch_size: int = 16,
    max_length: int | None = None,
    add_special_tokens: bool = True,
    progress: bool = False,
    desc: str = "scoring",
) -> list[float]:
    """``label``'s logit -- or its probability (softmax over the labels; a sigmoid for a one-label model) -- of each
    text, in the order of ``texts``. Texts are batched by length, padded on the right and, with ``max_length``,
    truncated from the **left** (the end of a completion, its answer, and the token the classifier reads stay in).
    The model is in eval mode while scoring; ``model`` may be wrapped (DDP, DeepSpeed): its ``config`` is read from
    the unwrapped module."""
    from tqdm.auto import tqdm

    config = (getattr(model, "module", None) or model).config
    if config.pad_token_id is None:
        raise ValueError(
            "The classifier's config has no pad_token_id: it reads the logits at the last non-pad token, so it "
            "needs one (set model.config.pad_token_id = tokenizer.pad_token_id)."
        )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    padding_side, truncation_side = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores: list[float] = [0.0] * len(texts)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
            index = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[i] for i in index],
                truncation=max_length is not None,
                max_length=max_length,
                padding=True,
                add_special_tokens=add_special_tokens,
                return_tensors="pt",
            ).to(device)
            logits = model(**encoded).logits.float()
            if probability:
                logits = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
            for i, value in zip(index, logits[:, label].tolist()):
                scores[i] = value
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = padding_side, truncation_side
        if was_training:
            model.train()
    return scores


def check_tokenization(tokenization: str, name: str = "tokenization") -> str:
    """``tokenization`` if it is one of :data:`TOKENIZATIONS`; a ``ValueError`` naming the setting ``name`` if not."""
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"{name} must be one of {list(TOKENIZATIONS)}, got {tokenization!r}.")
    return tokenization


def reward_model_texts(
    tokenizer,
    prompts: Sequence,
    completions: Sequence,
    terminated: Sequence[bool] | None = None,
    *,
    tokenization: str = "reward_trainer",
    chat_template_kwargs: dict[str, Any] | None = None,
) -> tuple[list[str], bool]:
    """What a reward model reads for each (prompt, completion): the texts, and whether its tokenizer adds its special
    tokens to them.

    * Conversational prompts (message lists): the conversation through ``tokenizer``'s chat template, no special
      tokens added (the template writes them), with either tokenization -- as ``RewardTrainer`` and
      ``GRPOTrainer`` both do.
    * Plain text, ``tokenization="reward_trainer"``: ``prompt + completion``, plus ``tokenizer.eos_token`` when the
      completion ended with EOS (``terminated``; ``None``: all did) and the text does not already end with it;
      special tokens added. ``RewardTrainer`` appends EOS to every training text and tokenizes it with
      ``tokenizer(text)``: a completion the policy ended reaches the model as its training data did. A truncated one
      gets no EOS (as TRL 1.12's ``PPOTrainer``, which scored the policy's tokens up to the cut).
    * Plain text, ``tokenization="grpo_trainer"``: ``prompt + completion``, no EOS, no special tokens.
    """
    check_tokenization(tokenization)
    if terminated is None:
        terminated = [True] * len(completions)
    texts: list[str] = []
    conversational = False
    for prompt, completion, ended in zip(prompts, completions, terminated, strict=True):
        if not isinstance(prompt, str):
            conversational = True
            texts.append(
                tokenizer.apply_chat_template(
                    [*prompt, *completion], tokenize=False, add_generation_prompt=False, **(chat_template_kwargs or {})
                )
            )
            continue
        text = prompt + completion
        eos = tokenizer.eos_token
        if tokenization == "reward_trainer" and ended and eos is not None and not text.endswith(eos):
            text += eos
        texts.append(text)
    return texts, tokenization == "reward_trainer" and not conversational


def ensure_pad_token(tokenizer, name: str):
    """``tokenizer`` with a pad token (its EOS token when it has none): a classifier reads the logits at the last
    non-pad token, so batches need one. Returns it."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"The tokenizer of {name} has neither a pad nor an EOS token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class RewardModel:
    """A sequence classifier as a TRL reward function: the reward of a completion is ``label``'s logit (or, with
    ``probability=True``, its probability) on the text ``prompt + completion``, read as the classifier was trained.

    Use it for classifiers with several labels (which label is the reward must be said), to score a probability
    rather than a logit, or to truncate long texts (``max_length``). A one-label reward model needs no wrapper: pass
    its path in ``reward_funcs`` (``ReFTTrainer`` then scores it with the same tokenization as this class).

    Args:
        model: a path (loaded with ``AutoModelForSequenceClassification.from_pretrained(model, **from_pretrained)``)
            or a loaded classifier.
        label: the logit that is the reward, as an index or an ``id2label`` name; may be omitted for one-label models.
        probability: score the label's probability (softmax over the labels; a sigmoid for one label).
        processing_class: the classifier's tokenizer (default: the one saved with ``model``). Its pad token (EOS if
            none) becomes ``config.pad_token_id``.
        tokenization: ``"reward_trainer"`` (EOS after a completion that ended, special tokens added: what TRL's
            ``RewardTrainer`` trains on) or ``"grpo_trainer"`` (the decoded text only); see
            :func:`reward_model_texts`. Default: the trainer's ``reward_model_tokenization`` (``"reward_trainer"``
            when called outside a trainer).
        max_length: truncate each text to its last ``max_length`` tokens (default: no truncation).
        batch_size: texts per forward.
        chat_template_kwargs: extra arguments of the chat template for conversational prompts (under ``ReFTTrainer``
            default: the trainer's ``chat_template_kwargs``, as TRL renders reward-model inputs).

    Under ``ReFTTrainer`` (and Online-ST) the trainer tells it which completions ended with EOS; called directly,
    ``terminated=`` (one bool per completion) does, and without it every completion counts as ended. The model is
    placed on the trainer's device (DeepSpeed: prepared for inference, as TRL prepares reward models); elsewhere it
    scores where it is.
    """

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        *,
        label: int | str | None = None,
        probability: bool = False,
        processing_class=None,
        tokenization: str | None = None,
        max_length: int | None = None,
        batch_size: int = 16,
        chat_template_kwargs: dict[str, Any] | None = None,
        **from_pretrained: Any,
    ):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if tokenization is not None:
            check_tokenization(tokenization)
        trust = from_pretrained.get("trust_remote_code", False)
        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
            if not is_sequence_classifier(config):
                raise ValueError(
                    f"Reward model {path} is not a sequence classifier (architectures={config.architectures}): "
                    "loaded as one, its score head would be random, so no label of it means anything. Train a "
                    "classifier, or pass the path itself in reward_funcs (TRL then adds a fresh one-label head)."
                )
            model = AutoModelForSequenceClassification.from_pretrained(path, **from_pretrained)
        else:
            path = getattr(model.config, "_name_or_path", "")
            if not is_sequence_classifier(model):
                raise ValueError(f"RewardModel needs a sequence classifier, got a {type(model).__name__}.")
            if processing_class is None and not path:
                raise ValueError(
                    "RewardModel(model) of an in-memory model without a checkpoint path (config._name_or_path) needs "
                    "its tokenizer: RewardModel(model, processing_class=tokenizer)."
                )
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        self.processing_class = ensure_pad_token(processing_class, path)
        model.config.pad_token_id = processing_class.pad_token_id
        model.requires_grad_(False)
        model.eval()
        self.label = resolve_label(model.config, label, path)
        self.model = model
        self.probability = probability
        self.tokenization = tokenization
        self.max_length = max_length
        self.batch_size = batch_size
        self.chat_template_kwargs = chat_template_kwargs
        # TRL logs rewards/<__name__>/mean; it names a plain reward model by its path's last part, so do we
        self.__name__ = Path(path).name or "reward_model"

    def inputs(self, prompts: Sequence, completions: Sequence, terminated: Sequence[bool] | None = None):
        """What the classifier reads (see :func:`reward_model_texts`): the texts, and whether special tokens are
        added."""
        return reward_model_texts(
            self.processing_class,
            prompts,
            completions,
            terminated,
            tokenization=self.tokenization or "reward_trainer",
            chat_template_kwargs=self.chat_template_kwargs,
        )

    def texts(self, prompts: Sequence, completions: Sequence, terminated: Sequence[bool] | None = None) -> list[str]:
        """The texts the classifier reads (:meth:`inputs`)."""
        return self.inputs(prompts, completions, terminated)[0]

    def __call__(self, prompts, completions, terminated: Sequence[bool] | None = None, **kwargs) -> list[float]:
        texts, add_special_tokens = self.inputs(prompts, completions, terminated)
        return classifier_scores(
            self.model,
            self.processing_class,
            texts,
            label=self.label,
            probability=self.probability,
            batch_size=self.batch_size,
            max_length=self.max_length,
            add_special_tokens=add_special_tokens,
        )

    def __repr__(self) -> str:
        kind = "probability" if self.probability else "logit"
        return f"RewardModel({self.__name__!r}, label={self.label}, {kind})"
