"""The two chain-of-thought formats, and the one place where a P-CoT program's text is put together.

* N-CoT (``cot="nl"``): natural language ending with an answer line (``Therefore, the answer is: 7``); the answer
  format (:mod:`reft_trl.rewards.extractors`) reads it.
* P-CoT (``cot="python"``): a program ``def solution():`` whose docstring is the question; the sandbox runs it and
  ``solution()``'s return value is the answer.

In the standard (plain-text) format the program header ends the prompt (it is the row's ``completion_prefix``), so
the model writes only the body: the program to run is the header followed by the completion
(:func:`program_text`). In the conversational format the assistant writes the whole program.
"""

from __future__ import annotations

import re
from typing import Any

COT_FORMATS = ("nl", "python")
"""``"nl"`` (N-CoT) and ``"python"`` (P-CoT)."""

PROGRAM_HEADER = "def solution():"
PYTHON_HEADER_TEMPLATE = PROGRAM_HEADER + '\n    """{question}"""\n'
"""The first two lines of every P-CoT program; the docstring is the question."""

_HEADER_RE = re.compile(re.escape(PROGRAM_HEADER) + r'\n    """(.*?)"""\n', re.DOTALL)


def check_cot(cot: Any) -> str:
    """``cot`` if it is one of :data:`COT_FORMATS`, else a ``ValueError`` naming the value."""
    if cot not in COT_FORMATS:
        raise ValueError(f"Unknown cot {cot!r}; expected one of {COT_FORMATS}.")
    return cot


def python_header(question: str) -> str:
    """``'def solution():\\n    \"\"\"<question>\"\"\"\\n'``: the part of a P-CoT program that belongs to the prompt."""
    return PYTHON_HEADER_TEMPLATE.format(question=question.strip())


def split_program(program: str) -> tuple[str, str]:
    """Split a P-CoT program into ``(header, body)`` with ``header + body == program``.

    ``header`` is ``def solution():`` plus the docstring line (newline included); ``body`` is the rest.
    Raises ``ValueError`` when the program does not start with that header.
    """
    match = _HEADER_RE.match(program)
    if match is None:
        raise ValueError(
            f"not a P-CoT program (expected it to start with 'def solution():' and a docstring): {program[:80]!r}"
        )
    return program[: match.end()], program[match.end() :]


def _content_text(content: Any) -> str:
    """Plain text of a message content: a string, or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(f"Cannot read text from a message content of type {type(content).__name__}.")


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """A plain completion, or the content of the last assistant message of a conversational one (``""`` if none)."""
    if isinstance(completion, str):
        return completion
    assistant = [m for m in completion if m.get("role") == "assistant"]
    return _content_text(assistant[-1]["content"]) if assistant else ""


def _prompt_header(prompt: str | list[dict[str, Any]] | None) -> str:
    """The prompt from its last ``def solution():`` on (``""`` if it has none): a standard P-CoT prompt's header."""
    if prompt is None:
        return ""
    text = prompt if isinstance(prompt, str) else (_content_text(prompt[-1]["content"]) if prompt else "")
    start = text.rfind(PROGRAM_HEADER)
    return text[start:] if start >= 0 else ""


def program_text(
    completion: str | list[dict[str, Any]],
    *,
    prefix: str | None = None,
    prompt: str | list[dict[str, Any]] | None = None,
) -> str:
    """The whole P-CoT program for a generated completion.

    A completion that itself starts with ``def solution():`` (conversational rows) is the whole program. Otherwise
    the program is the header that ended the prompt followed by the completion: the row's ``completion_prefix`` when
    given (``prefix``), else the ``prompt`` from its last ``def solution():`` onward.
    """
    text = completion_text(completion)
    if text.lstrip().startswith(PROGRAM_HEADER):
        return text
    header = prefix if prefix is not None else _prompt_header(prompt)
    return header + text
