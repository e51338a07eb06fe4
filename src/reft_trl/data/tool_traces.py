"""Tool-calling versions of N-CoT annotations: SFT traces that call the ``python`` tool for the arithmetic.

An N-CoT annotation of the embedded task (and of SVAMP-style data) is one line per step, ``a <op> b = c``, then the
answer line. :func:`tool_trace` turns it into the assistant and tool messages of a multi-turn conversation: every
step becomes a call ``python(code="a <op> b")`` (exact division as ``//``, so the reply is the integer the
annotation wrote), the tool's reply ``c`` (what :func:`reft_trl.sandbox.python_tool` prints for that code), and
the answer line is the final assistant message. Rendered with a tool-calling chat template (e.g.
:func:`reft_trl.models.tiny.tool_chat_tokenizer`), these are the warm-up traces of a tool-using policy; at RL time
the model's own calls run in the sandbox.
"""

from __future__ import annotations

import re
from typing import Any

from reft_trl.rewards.extractors import ANSWER_TRIGGER

_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_PYTHON_OP = {"+": "+", "-": "-", "*": "*", "/": "//"}


def tool_trace(cot: str, tool_name: str = "python") -> list[dict[str, Any]]:
    """The assistant/tool messages that compute ``cot``'s steps with the ``tool_name`` tool (see the module doc).

    Raises ``ValueError`` for a line that is neither a step ``a <op> b = c`` with an exact integer result nor the
    answer line (which must be the last line)."""
    lines = [line for line in cot.strip().splitlines() if line.strip()]
    if not lines or not lines[-1].startswith(ANSWER_TRIGGER):
        raise ValueError(f"tool_trace: the annotation must end with the answer line ({ANSWER_TRIGGER!r}): {cot!r}")
    messages: list[dict[str, Any]] = []
    for line in lines[:-1]:
        match = _STEP.match(line)
        if match is None:
            raise ValueError(f"tool_trace: not an arithmetic step 'a <op> b = c': {line!r}")
        a, op, b, c = match.groups()
        x, y = int(a), int(b)
        exact = op != "/" or (y != 0 and x % y == 0)
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else None}[op]
        if not exact or value != int(c):
            raise ValueError(f"tool_trace: the step {line!r} is not exact integer arithmetic")
        code = f"{a} {_PYTHON_OP[op]} {b}"
        call = {"type": "function", "function": {"name": tool_name, "arguments": {"code": code}}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "name": tool_name, "content": c})
    messages.append({"role": "assistant", "content": lines[-1].strip()})
    return messages


def tool_sft_rows(dataset):
    """Conversational N-CoT SFT rows (``load_mwp(..., kind="sft", cot="nl", chat=True)``: a one-message assistant
    ``completion``) with each completion replaced by its :func:`tool_trace`: the warm-up rows of a tool-using policy.
    An annotation without steps (the answer line alone) stays one assistant message that calls no tool."""
    return dataset.map(lambda row: {"completion": tool_trace(row["completion"][-1]["content"])})


__all__ = ["tool_sft_rows", "tool_trace"]
