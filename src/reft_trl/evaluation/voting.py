"""Inference-time answer selection over k sampled completions: majority voting and ORM reranking.

Both selectors are pure functions that return the **index** of the chosen sample (or ``None``), so the caller reads
the chosen sample's extracted answer and its correctness from what it already graded -- nothing is graded twice.

Majority voting groups answers by **exact equality** (``==``), as the ReFT reference's ``collections.Counter`` does:

* numbers equal as numbers vote together (``5``, ``5.0`` and ``5.00`` all parse to ``5.0``; ``1e3 == 1000.0``;
  ``-0.0 == 0.0``, and the answer reported is the first one seen);
* there is **no tolerance inside the vote**: ``5.001`` and ``5.002`` are different answers, although each is
  within the 1e-2 of a gold ``5`` that makes it correct. Tolerance-grouping is not transitive (``5.000 ~ 5.008 ~
  5.016`` but ``5.000 !~ 5.016``), so the vote would depend on the order of the samples; exact grouping
  reproduces the reference's published voting numbers (``goldens/majority_vote_dev.json`` records 6 and 7);
* ``NaN`` never equals anything, itself included, so every ``NaN`` is its own single vote (the reference's
  ``Counter`` behaves the same on separately parsed NaNs; reft-trl's extractors never produce NaN anyway);
* ``None`` (nothing extracted) does not vote; ties go to the answer that appeared first.

Whether the voted answer is correct is therefore the correctness of the first sample that carries it: samples in a
group have equal answers and so were graded the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "at_k_accuracy",
    "default_ks",
    "majority_vote",
    "majority_vote_index",
    "rerank_index",
    "vote_counts",
]


def _answer(item: Any) -> Any:
    """The extracted answer of an :class:`~reft_trl.rewards.Outcome`, a sample record (a mapping with ``answer``),
    or the item itself when it is a plain answer."""
    if isinstance(item, Mapping):
        return item["answer"]
    if hasattr(item, "status") and hasattr(item, "answer"):
        return item.answer
    return item


def vote_counts(answers: Iterable[Any]) -> list[tuple[int, int]]:
    """``(index of the first sample with the answer, votes)`` for each distinct answer, in order of first appearance.

    ``answers`` are plain extracted answers, :class:`~reft_trl.rewards.Outcome` objects, or sample records with an
    ``answer`` key. ``None`` does not vote. Answers are grouped by ``==`` (works for unhashable answers too).
    """
    representatives: list[Any] = []
    groups: list[list[int]] = []  # [first index, votes]
    for index, item in enumerate(answers):
        answer = _answer(item)
        if answer is None:
            continue
        for g, rep in enumerate(representatives):
            if rep == answer:  # NaN != NaN: a NaN never joins a group
                groups[g][1] += 1
                break
        else:
            representatives.append(answer)
            groups.append([index, 1])
    return [(first, votes) for first, votes in groups]


def majority_vote_index(answers: Iterable[Any]) -> int | None:
    """Index of the first sample carrying the most-voted answer (ties: the answer seen first), or ``None`` when no
    sample has an answer. Accepts the same items as :func:`vote_counts`."""
    best: tuple[int, int] | None = None
    for first, votes in vote_counts(answers):
        if best is None or votes > best[1]:  # strict: an earlier answer keeps a tie
            best = (first, votes)
    return None if best is None else best[0]


def majority_vote(answers: Sequence[Any]) -> Any:
    """The most frequent non-``None`` answer; ties go to the answer that appeared first; ``None`` if nothing votes.

        >>> majority_vote([6.0, 5.0, 5.0, 6.0, None, None, None])
        6.0
        >>> majority_vote([None, None]) is None
        True

    Answers equal as numbers vote together (``5 == 5.0``), with no tolerance (``5.001 != 5.002``); see the module
    docstring for why. :class:`~reft_trl.rewards.Outcome` objects and sample records are accepted too (their
    ``answer`` votes).
    """
    answers = list(answers)
    index = majority_vote_index(answers)
    return None if index is None else _answer(answers[index])


def rerank_index(scores: Sequence[float], answers: Sequence[Any]) -> int | None:
    """ORM reranking: the index of the highest-scored sample **among those with an extracted answer**.

    ``scores[i]`` is the ORM's P(correct) of sample ``i`` (any monotone score works); ``answers[i]`` its extracted
    answer, :class:`~reft_trl.rewards.Outcome` or sample record (``None`` = nothing extracted). Samples without an
    answer are ignored whatever their score (the reference's rule). Ties go to the earliest sample (``argmax``).
    Returns ``None`` when no sample has an answer. A score may be ``None`` for a sample without an answer (it is
    never looked at); a missing or NaN score for a sample *with* an answer raises ``ValueError``.
    """
    answers = list(answers)
    if len(scores) != len(answers):
        raise ValueError(f"rerank_index got {len(scores)} scores for {len(answers)} samples.")
    best: int | None = None
    for index, (score, item) in enumerate(zip(scores, answers)):
        if _answer(item) is None:
            continue
        if score is None or (isinstance(score, float) and math.isnan(score)):
            raise ValueError(f"Sample {index} has an answer but its ORM score is {score!r}.")
        if best is None or score > scores[best]:
            best = index
    return best


def default_ks(num_samples: int) -> list[int]:
    """The k of the voting@k curve: 1, 4, 16, 64, ... (powers of 4) up to ``num_samples``, and ``num_samples``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 4
    return [*ks, num_samples]


def at_k_accuracy(
    samples: Sequence[Sequence[Mapping[str, Any]]],
    ks: Iterable[int],
    *,
    score_key: str | None = None,
) -> list[dict[str, Any]]:
    """Accuracy of majority voting (and ORM reranking, and the oracle pass@k) over the first k samples of every
    question, for each k in ``ks`` -- one set of samples gives the whole voting@k curve without re-sampling.

    Args:
        samples: per question, its sample records in sampling order, each a mapping with ``answer`` (extracted,
            ``None`` if nothing) and ``correct`` (bool), and ``score_key`` when reranking.
        ks: sample counts; each must be between 1 and the smallest number of samples of a question.
        score_key: the record key of the ORM score (``"orm_score"``); ``None`` skips reranking.

    Returns:
        rows ``{"method", "k", "accuracy", "n"}`` with method ``"voting"``, ``"rerank"`` (when scored) and
        ``"pass"`` (some sample among the first k is correct: the upper bound of any selector), ``accuracy`` a
        fraction over the ``n`` questions; a question whose selector returns ``None`` counts as wrong.
    """
    if not samples:
        raise ValueError("at_k_accuracy got no questions.")
    fewest = min(len(s) for s in samples)
    rows = []
    for k in sorted(set(ks)):
        if not 1 <= k <= fewest:
            raise ValueError(f"k={k} must be between 1 and {fewest} (the fewest samples any question has).")
        methods = {"voting": 0, "pass": 0}
        if score_key is not None:
            methods["rerank"] = 0
        for question in samples:
            first = question[:k]
            vote = majority_vote_index(first)
            methods["voting"] += vote is not None and bool(first[vote]["correct"])
            methods["pass"] += any(bool(s["correct"]) for s in first)
            if score_key is not None:
                pick = rerank_index([s.get(score_key) for s in first], first)
                methods["rerank"] += pick is not None and bool(first[pick]["correct"])
        for method, correct in methods.items():
            rows.append({"method": method, "k": k, "accuracy": correct / len(samples), "n": len(samples)})
    order = {"voting": 0, "rerank": 1, "pass": 2}
    return sorted(rows, key=lambda row: (order[row["method"]], row["k"]))
