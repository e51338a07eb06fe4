"""Sample records: one graded completion of one question, the unit that voting, reranking, Offline-ST and the ORM
read. :func:`grade_samples` makes them (every completion graded in one :func:`reft_trl.rewards.grade_rows` call, as
the reward grades it), :func:`group_by_question` groups them, :func:`dedup_key` says when two are the same CoT::

    {"question_index": 12, "item_id": "gsm8k_12", "sample_index": 3, "completion": "...",
     "answer": 18.0, "status": "correct", "correct": true}

``completion`` is exactly the generated text (for P-CoT the program body after the header that ended the prompt);
``answer`` is the extracted answer (``null`` if nothing could be extracted).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reft_trl.rewards import grade_rows

__all__ = ["dedup_key", "grade_samples", "group_by_question"]


def _jsonable(answer: Any) -> Any:
    if answer is None or isinstance(answer, (bool, int, str)):
        return answer
    if isinstance(answer, float):
        return answer if math.isfinite(answer) else str(answer)
    return str(answer)


def grade_samples(
    rows: Sequence[Mapping[str, Any]], completions: Sequence[Sequence[str]], *, first_index: int = 0
) -> list[dict[str, Any]]:
    """Sample records (see the module docstring) of ``completions[i]`` for ``rows[i]``, question indices counted from
    ``first_index``. All completions are graded in one :func:`~reft_trl.rewards.grade_rows` call (P-CoT
    programs run in parallel in the sandbox)."""
    if len(completions) != len(rows):
        raise ValueError(f"Got completions for {len(completions)} prompts but there are {len(rows)} rows.")
    flat_rows, flat_texts, where = [], [], []
    for i, (row, texts) in enumerate(zip(rows, completions)):
        for s, text in enumerate(texts):
            flat_rows.append(row)
            flat_texts.append(text)
            where.append((i, s))
    outcomes = grade_rows(flat_rows, flat_texts)
    return [
        {
            "question_index": first_index + i,
            "item_id": rows[i].get("item_id"),
            "sample_index": s,
            "completion": text,
            "answer": _jsonable(outcome.answer),
            "status": outcome.status,
            "correct": outcome.status == "correct",
        }
        for (i, s), text, outcome in zip(where, flat_texts, outcomes)
    ]


def dedup_key(completion: str) -> str:
    """Two completions of one question are duplicates when they are equal up to surrounding whitespace."""
    return completion.strip()


def group_by_question(records: Iterable[Mapping[str, Any]], n_questions: int | None = None) -> list[list[dict]]:
    """Records grouped per ``question_index`` (``0 .. n_questions - 1``), each group in ``sample_index`` order."""
    records = list(records)
    n = n_questions if n_questions is not None else 1 + max((r["question_index"] for r in records), default=-1)
    groups: list[list[dict]] = [[] for _ in range(n)]
    for record in records:
        q = record["question_index"]
        if not 0 <= q < n:
            raise ValueError(f"A sample record has question_index {q}, outside 0..{n - 1}.")
        groups[q].append(dict(record))
    for group in groups:
        group.sort(key=lambda r: r["sample_index"])
    return groups
