"""Greedy answer accuracy of a model on prompt-only rows (``prompt``, ``answer``, ``answer_format``, ``cot``,
``completion_prefix``), graded by :func:`reft_trl.rewards.grade_rows` exactly as the reward grades them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from reft_trl.evaluation.generation import generate_completions
from reft_trl.evaluation.tool_generation import generate_with_tools
from reft_trl.rewards import grade_rows


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
    tools: Sequence[Callable] | None = None,
) -> dict[str, float]:
    """Greedy-decode every row's prompt and score it. Returns ``accuracy``, ``unparsable`` (fractions) and ``n``.

    With ``tools`` (conversational prompts, a tokenizer with a tool-calling chat template and ``response_template``),
    each prompt is a greedy multi-turn conversation in which the model's tool calls run
    (:func:`reft_trl.evaluation.tool_generation.generate_with_tools`, ``max_new_tokens`` bounding the whole completion
    as in training) and its last assistant message is graded.

    With an ``accelerator`` of several processes, each process decodes a strided shard and the counts are summed.
    """
    rows = list(dataset)
    if not rows:
        raise ValueError("answer_accuracy got an empty dataset.")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    shard = rows[rank::world]
    statuses: list[str] = []
    if shard:
        prompts = [row["prompt"] for row in shard]
        options = dict(
            max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress and rank == 0, desc=desc
        )
        if tools:
            graded = generate_with_tools(model, tokenizer, prompts, tools, **options)
        else:
            graded = [c[0] for c in generate_completions(model, tokenizer, prompts, **options)]
        statuses = [o.status for o in grade_rows(shard, graded)]
    counts = torch.tensor(
        [statuses.count("correct"), statuses.count("unparsable"), len(statuses)], dtype=torch.float64
    )
    if accelerator is not None and world > 1:
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    correct, unparsable, n = counts.tolist()
    return {"accuracy": correct / n, "unparsable": unparsable / n, "n": int(n)}
