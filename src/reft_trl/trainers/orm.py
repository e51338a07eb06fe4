"""The outcome reward model (ORM) for reranking: labelled data from sampled CoTs, training, scoring.

The ORM is a 2-label sequence classifier (``AutoModelForSequenceClassification``, ``num_labels=2``; label 1 =
"correct") initialised from an SFT or ReFT checkpoint and trained with transformers' ``Trainer`` on sampled
completions labelled by the answer grader. At inference, ``P(correct) = softmax(logits)[1]`` and reranking picks the
highest-scored sample among those with an extracted answer (:func:`reft_trl.evaluation.voting.rerank_index`).

Choices (reference behaviour unless said otherwise):

* **Text** = prompt + completion, i.e. ``"Question:\\n<q>\\nAnswer reasoning:\\n" + CoT``; for P-CoT the prompt ends
  with the program header, so the text is the whole program. Conversational prompts are rendered with the chat
  template, the completion as the assistant turn.
* **Labels**: 1 for ``correct``, 0 for ``wrong`` and ``unparsable``.
* **Unparsable samples are kept** as negatives by default (``include_unparsable=True``), as the reference trains
  on every de-duplicated sample. Reranking never looks at them (it only ranks samples with an answer), so
  ``include_unparsable=False`` spends the training budget on the decision that matters; both are supported.
* **De-duplication** per question, on the completion up to surrounding whitespace (first occurrence kept).
* **Truncation** to ``max_length`` tokens (700) from the **left**: the final answer -- what decides the label --
  and the last token the classifier reads stay in. (The reference cut from the right; its samples were capped at
  700 tokens in total, so this only matters for longer ones.)
* **Padding**: on the right, with ``config.pad_token_id`` set (from the tokenizer, else its EOS token): Llama-style
  classifiers read the logits at the last non-pad token and refuse batches without a pad id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from reft_trl.evaluation.records import dedup_key, group_by_question
from reft_trl.models.reward_model import RewardModel, classifier_scores, ensure_pad_token

__all__ = [
    "ORM_LABELS",
    "ORMConfig",
    "ORMReward",
    "build_orm_dataset",
    "load_orm",
    "load_orm_tokenizer",
    "orm_scores",
    "orm_text",
    "orm_trainer",
    "tokenize_orm_dataset",
]

ORM_LABELS = {0: "incorrect", 1: "correct"}
CORRECT = 1
"""The label whose probability is the ORM's score."""


@dataclass
class ORMConfig(TrainingArguments):
    """``TrainingArguments`` with the reference ORM's defaults (3 epochs, lr 1e-6, batch 24, max length 700,
    linear schedule with 10% warm-up)."""

    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the labelled samples (reference: 3)."})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (reference: 1e-6)."})
    per_device_train_batch_size: int = field(
        default=24, metadata={"help": "Batch size per device (reference: 24 in total)."}
    )
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warm-up: steps, or a fraction of all steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints during training ('no': the final model)."})
    max_length: int = field(
        default=700, metadata={"help": "Tokens per text; longer texts lose their beginning (the answer is kept)."}
    )
    include_unparsable: bool = field(
        default=True,
        metadata={"help": "Train on samples with no extracted answer too (as label 0), as the reference does."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})


def load_orm_tokenizer(model_name_or_path: str, **kwargs: Any):
    """The tokenizer for ORM training and scoring: a pad token (EOS if none), right padding, left truncation."""
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(model_name_or_path, **kwargs), model_name_or_path)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    return tokenizer


def load_orm(model_name_or_path: str, tokenizer, **kwargs: Any):
    """A 2-label ``AutoModelForSequenceClassification`` from a causal-LM checkpoint (new score head) or a trained ORM.

    ``config.pad_token_id`` is set from ``tokenizer`` (see :func:`load_orm_tokenizer`); ``kwargs`` go to
    ``from_pretrained`` (``dtype``, ``revision``, ...).
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        model_name_or_path,
        num_labels=2,
        id2label=dict(ORM_LABELS),
        label2id={v: k for k, v in ORM_LABELS.items()},
        **kwargs,
    )
    if tokenizer.pad_token_id is None:
        raise ValueError("The ORM tokenizer needs a pad token: load it with load_orm_tokenizer().")
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def orm_text(prompt: str | list[dict[str, Any]], completion: str, tokenizer=None) -> str:
    """What the ORM reads: the prompt followed by the completion (chat prompts through the chat template)."""
    if isinstance(prompt, str):
        return prompt + completion
    if tokenizer is None:
        raise ValueError("A conversational prompt needs the tokenizer (its chat template) to build the ORM text.")
    return tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": completion}], tokenize=False, add_generation_prompt=False
    )


def build_orm_dataset(
    rows: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    *,
    include_unparsable: bool = True,
    tokenizer=None,
) -> tuple[Dataset, dict[str, int]]:
    """Labelled ORM data from sample records: one row per distinct completion of each question.

    Args:
        rows: the prompt-only rows that were sampled; ``rows[q]`` is question ``q`` of the records.
        samples: sample records (``question_index``, ``completion``, ``status``, ``correct``), e.g.
            :func:`reft_trl.evaluation.shards.read_samples`.
        include_unparsable: keep samples with no extracted answer (label 0).
        tokenizer: needed for conversational prompts only.

    Returns:
        ``(dataset, stats)``: columns ``text``, ``label`` (1 correct / 0 wrong or unparsable), ``item_id``,
        ``question_index``, ``sample_index``; ``stats`` with ``samples``, ``duplicates_removed``,
        ``unparsable_dropped``, ``positives``, ``negatives``, ``questions`` (with at least one row).
    """
    rows = list(rows)
    out: list[dict[str, Any]] = []
    stats = dict.fromkeys(("samples", "duplicates_removed", "unparsable_dropped", "positives", "negatives"), 0)
    questions = 0
    for q, group in enumerate(group_by_question(samples, len(rows))):
        seen: set[str] = set()
        before = len(out)
        for record in group:
            stats["samples"] += 1
            if record.get("item_id") != rows[q].get("item_id"):
                raise ValueError(
                    f"Sample of question {q} has item_id {record.get('item_id')!r} but the row has "
                    f"{rows[q].get('item_id')!r}: the samples were taken on other data."
                )
            key = dedup_key(record["completion"])
            if key in seen:
                stats["duplicates_removed"] += 1
                continue
            seen.add(key)
            if record["status"] == "unparsable" and not include_unparsable:
                stats["unparsable_dropped"] += 1
                continue
            label = int(record["status"] == "correct")
            stats["positives" if label else "negatives"] += 1
            out.append(
                {
                    "text": orm_text(rows[q]["prompt"], record["completion"], tokenizer),
                    "label": label,
                    "item_id": record.get("item_id"),
                    "question_index": q,
                    "sample_index": record["sample_index"],
                }
            )
        questions += len(out) > before
    if not out:
        raise ValueError("No ORM training rows: every sample was dropped (no samples, or all unparsable).")
    return Dataset.from_list(out), {**stats, "questions": questions, "rows": len(out)}


def tokenize_orm_dataset(dataset: Dataset, tokenizer, max_length: int = 700) -> Dataset:
    """``input_ids``/``attention_mask``/``labels`` of a ``text``/``label`` dataset (truncated to ``max_length``)."""

    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        return {**encoded, "labels": batch["label"]}

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing ORM data")


def _accuracy(eval_pred) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def orm_trainer(
    model,
    tokenizer,
    args: ORMConfig,
    train_dataset: Dataset,
    eval_dataset: Dataset | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """A plain transformers ``Trainer`` for the ORM: cross-entropy over the 2 labels, classification accuracy at
    evaluation. The datasets have ``text``/``label`` columns (:func:`build_orm_dataset`); they are tokenized here."""
    max_length = getattr(args, "max_length", 700)
    return Trainer(
        model=model,
        args=args,
        train_dataset=tokenize_orm_dataset(train_dataset, tokenizer, max_length),
        eval_dataset=None if eval_dataset is None else tokenize_orm_dataset(eval_dataset, tokenizer, max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=_accuracy if eval_dataset is not None else None,
        **trainer_kwargs,
    )


def orm_scores(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 700,
    progress: bool = True,
    desc: str = "ORM scoring",
) -> list[float]:
    """``P(correct) = softmax(logits)[1]`` of each text, batched by length (same order as ``texts``), tokenized as
    in training (special tokens added, truncated from the left to ``max_length``)."""
    return classifier_scores(
        model,
        tokenizer,
        texts,
        label=CORRECT,
        probability=True,
        batch_size=batch_size,
        max_length=max_length,
        add_special_tokens=True,
        progress=progress,
        desc=desc,
    )


class ORMReward(RewardModel):
    """A trained ORM as a reward function in one line: ``ReFTTrainer(..., reward_funcs=ORMReward(path))``.

    The reward of a completion is ``P(correct)`` -- exactly :func:`orm_scores` on :func:`orm_text`, the scoring of
    ``recipes/orm.py`` and of reranking: the ORM's tokenizer with special tokens, left truncation to ``max_length``
    tokens, no EOS appended (the ORM was trained on :func:`orm_text`; ``reward_model_tokenization`` does not apply).
    (Passed as a plain path, TRL would read ``logits[:, 0]``, the *incorrect* logit; ReFTTrainer refuses that.)
    ``from_pretrained`` kwargs (``dtype``, ``revision``, ...) are passed on."""

    def __init__(self, model_name_or_path: str, *, max_length: int = 700, batch_size: int = 16, **from_pretrained):
        tokenizer = load_orm_tokenizer(
            model_name_or_path, trust_remote_code=from_pretrained.get("trust_remote_code", False)
        )
        super().__init__(
            model_name_or_path,
            label=CORRECT,
            probability=True,
            processing_class=tokenizer,
            max_length=max_length,
            batch_size=batch_size,
            **from_pretrained,
        )

    def inputs(self, prompts, completions, terminated=None):
        """:func:`orm_text` of each pair (the completion's text for chat prompts), special tokens added: what the ORM
        was trained on, whether the completion ended or not."""
        texts = [
            orm_text(p, c if isinstance(c, str) else c[-1]["content"], self.processing_class)
            for p, c in zip(prompts, completions, strict=True)
        ]
        return texts, True
