"""Greedy answer accuracy of a model on prompt-only rows (``prompt``, ``answer``, ``answer_format``, ``cot``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from reft_trl.evaluation.generation import generate_completions
from reft_trl.rewards import Outcome, grade_completions, program_text


def grade_rows(
    rows: list[Mapping[str, Any]], completions: list[str], *, answer_format: str = "numeric", cot: str = "nl"
) -> list[Outcome]:
    """:class:`reft_trl.rewards.Outcome` (extracted answer, status, reward) of each completion for its row.

    A P-CoT completion is scored as the whole program: the row's ``completion_prefix`` (the header that ended the
    prompt) followed by the completion, exactly as the reward builds it (:func:`reft_trl.rewards.program_text`).
    ``answer_format`` / ``cot`` are defaults for rows without those columns.
    """
    cots = [row.get("cot", cot) for row in rows]
    texts = [
        program_text(text, prefix=row.get("completion_prefix", "")) if c == "python" else text
        for row, text, c in zip(rows, completions, cots, strict=True)
    ]
    return grade_completions(
        texts,
        [row["answer"] for row in rows],
        answer_format=[row.get("answer_format", answer_format) for row in rows],
        cot=cots,
    )


def score_rows(
    rows: list[Mapping[str, Any]], completions: list[str], *, answer_format: str = "numeric", cot: str = "nl"
) -> list[float]:
    """The reward of each completion for its row (1.0 / 0.1 / 0.0), as :func:`reft_trl.rewards.score_completions`
    gives it; :func:`grade_rows` also returns the extracted answers and statuses."""
    return [o.reward for o in grade_rows(rows, completions, answer_format=answer_format, cot=cot)]


def answer_accuracy(
    model,
    tokenizer,
    dataset: Iterable[Mapping[str, Any]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    accelerator=None,
    progress: bool = True,
    desc: str = "greedy accuracy",
) -> dict[str, float]:
    """Greedy-decode every row's prompt and score it. Returns ``accuracy``, ``unparsable`` (fractions) and ``n``.

    With an ``accelerator`` of several processes, each process decodes a strided shard and the counts are summed.
    """
    rows = list(dataset)
    if not rows:
        raise ValueError("answer_accuracy got an empty dataset.")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    shard = rows[rank::world]
    statuses: list[str] = []
    if shard:
        completions = generate_completions(
            model,
            tokenizer,
            [row["prompt"] for row in shard],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=progress and rank == 0,
            desc=desc,
        )
        statuses = [o.status for o in grade_rows(shard, [c[0] for c in completions])]
    counts = torch.tensor(
        [statuses.count("correct"), statuses.count("unparsable"), len(statuses)], dtype=torch.float64
    )
    if accelerator is not None and world > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    correct, unparsable, n = counts.tolist()
    return {"accuracy": correct / n, "unparsable": unparsable / n, "n": int(n)}
