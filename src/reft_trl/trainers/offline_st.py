"""Offline self-training (Offline-ST), the ReFT paper's first baseline: the data side.

The recipe (``recipes/offline_st.py``) samples k CoTs per training question at T=1.0 from the warm-up checkpoint
(:func:`reft_trl.evaluation.shards.sample_to_shards`), keeps the correct ones, de-duplicates them, keeps up to m
per question, mixes them with the original SFT data and fine-tunes the *base* model on the mixture with
:class:`~reft_trl.trainers.WarmupSFTTrainer` (paper defaults k=100, m=10, 20 epochs).

Selection, as the reference implementation does it, per question and in sampling order:

1. only samples graded ``correct`` count;
2. duplicates (equal up to surrounding whitespace, :func:`~reft_trl.evaluation.records.dedup_key`) are dropped,
   the first occurrence kept;
3. the first ``max_per_question`` distinct correct samples are kept (samples are i.i.d., so the first m are a
   uniform choice);
4. a kept sample identical to the question's gold completion is dropped, because the original row is in the
   mixture anyway. (The reference appends the gold CoT unless it is among the kept samples: the same set of texts.)

Every original SFT row is kept. A kept sample becomes a prompt-completion row with the prompt it was sampled from
and, as completion, exactly the generated text -- for P-CoT the program body that followed the header ending the
prompt, like the original P-CoT SFT rows; TRL appends the EOS token as it does for the original rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Dataset

from reft_trl.data import messages
from reft_trl.evaluation.records import dedup_key, group_by_question
from reft_trl.rewards.cot import completion_text

__all__ = ["offline_st_dataset", "select_correct_samples"]


def select_correct_samples(
    samples_per_question: Sequence[Sequence[Mapping[str, Any]]],
    *,
    max_per_question: int | None = 10,
    gold_completions: Sequence[str | None] | None = None,
) -> tuple[list[list[dict]], dict[str, int]]:
    """The correct, de-duplicated samples kept for each question, and counts of what happened to the others.

    Args:
        samples_per_question: per question, its sample records in sampling order (``completion``, ``correct``);
            see :func:`~reft_trl.evaluation.records.group_by_question`.
        max_per_question: keep at most this many distinct correct samples per question (``None``: all).
        gold_completions: per question, the gold completion of the original data (or ``None``); kept samples equal to
            it are dropped (``same_as_gold``).

    Returns:
        ``(kept, stats)``: ``kept[q]`` the records kept for question ``q``; ``stats`` with ``questions``,
        ``samples``, ``correct_samples``, ``questions_with_correct`` (at least one correct sample),
        ``duplicates_removed`` (correct samples equal to an earlier correct sample of the question),
        ``over_limit`` (distinct correct samples beyond ``max_per_question``), ``same_as_gold`` and
        ``kept_samples``.
    """
    if max_per_question is not None and max_per_question < 0:
        raise ValueError(f"max_per_question must be >= 0 (or None for no limit), got {max_per_question}.")
    if gold_completions is not None and len(gold_completions) != len(samples_per_question):
        raise ValueError(f"Got {len(gold_completions)} gold completions for {len(samples_per_question)} questions.")
    stats = dict.fromkeys(
        (
            "questions",
            "samples",
            "correct_samples",
            "questions_with_correct",
            "duplicates_removed",
            "over_limit",
            "same_as_gold",
            "kept_samples",
        ),
        0,
    )
    kept: list[list[dict]] = []
    for q, samples in enumerate(samples_per_question):
        stats["questions"] += 1
        stats["samples"] += len(samples)
        correct = [dict(s) for s in samples if s["correct"]]
        stats["correct_samples"] += len(correct)
        stats["questions_with_correct"] += bool(correct)
        gold = gold_completions[q] if gold_completions is not None else None
        gold_key = dedup_key(gold) if gold is not None else None
        seen: set[str] = set()
        chosen: list[dict] = []
        distinct = 0
        for sample in correct:
            key = dedup_key(sample["completion"])
            if key in seen:
                stats["duplicates_removed"] += 1
                continue
            seen.add(key)
            distinct += 1
            if max_per_question is not None and distinct > max_per_question:
                stats["over_limit"] += 1
                continue
            if key == gold_key:
                stats["same_as_gold"] += 1
                continue
            chosen.append(sample)
        stats["kept_samples"] += len(chosen)
        kept.append(chosen)
    return kept, stats


def offline_st_dataset(
    sft_rows: Sequence[Mapping[str, Any]],
    sampled_rows: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    *,
    max_per_question: int | None = 10,
) -> tuple[Dataset, dict[str, int]]:
    """The Offline-ST training set: every original SFT row plus the selected samples, as prompt-completion rows.

    Args:
        sft_rows: the original SFT rows (``prompt``, ``completion``, ``item_id``), e.g.
            ``DataArguments.train_dataset("sft")``.
        sampled_rows: the prompt-only rows that were sampled; ``sampled_rows[q]`` is question ``q`` of the records.
        samples: the sample records (:func:`~reft_trl.evaluation.shards.read_samples`).
        max_per_question: the paper's m (10).

    Returns:
        ``(dataset, stats)``: columns ``prompt``, ``completion``, ``item_id`` and ``source`` (``"original"`` or
        ``"sample"``); ``stats`` as :func:`select_correct_samples` plus ``original_rows`` and ``train_rows``.
    """
    sampled_rows = list(sampled_rows)
    gold_by_id: dict[Any, str] = {}
    original = []
    for row in sft_rows:
        gold_by_id.setdefault(row["item_id"], completion_text(row["completion"]))
        original.append(
            {"prompt": row["prompt"], "completion": row["completion"], "item_id": row["item_id"], "source": "original"}
        )
    groups = group_by_question(samples, len(sampled_rows))
    for q, group in enumerate(groups):
        for record in group:
            if record.get("item_id") != sampled_rows[q].get("item_id"):
                raise ValueError(
                    f"Sample of question {q} has item_id {record.get('item_id')!r} but the sampled row has "
                    f"{sampled_rows[q].get('item_id')!r}: the samples were taken on other data."
                )
    golds = [gold_by_id.get(row.get("item_id")) for row in sampled_rows]
    kept, stats = select_correct_samples(groups, max_per_question=max_per_question, gold_completions=golds)
    new_rows = []
    for row, chosen in zip(sampled_rows, kept):
        conversational = not isinstance(row["prompt"], str)
        for sample in chosen:
            completion = sample["completion"]
            new_rows.append(
                {
                    "prompt": row["prompt"],
                    "completion": messages(completion, "assistant") if conversational else completion,
                    "item_id": row.get("item_id"),
                    "source": "sample",
                }
            )
    stats = {**stats, "original_rows": len(original), "train_rows": len(original) + len(new_rows)}
    return Dataset.from_list(original + new_rows), stats
