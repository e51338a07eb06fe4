"""Prompt and target formats of the ReFT reference implementation, as small pure functions.

Standard (plain-text) format, exactly as the reference::

    prompt       = "Question:\\n" + question.strip() + "\\nAnswer reasoning:\\n"
    N-CoT target = answer_cot.strip() + "\\nTherefore, the answer is: " + answer_value
    P-CoT target = python_header(question) + body      (body ends with "    return result")

where ``python_header(question)`` is the line ``def solution():`` followed by the line
``<4 spaces><3 double quotes><question><3 double quotes>`` (both newline-terminated).

The tokenizer's EOS is *not* part of any target: TRL's ``SFTTrainer`` appends ``eos_token`` to every
non-conversational completion itself (``add_eos`` in ``trl/trainer/sft_trainer.py``), and the chat template
closes conversational ones.

P-CoT: during RL and sampling the program header is part of the prompt, and the model writes the body. For SFT
we make the same split (header in the prompt, loss on the body only) so that the warm-up model is trained on
exactly the context it sees during RL. The header is always rebuilt from the question (:func:`python_header`),
never copied from the annotated program, so SFT and RL prompts agree even where an annotation's docstring
differs from the question (37 SVAMP programs do). The row's ``completion_prefix`` (the header) followed by a
completion is the whole program (:func:`reft_trl.rewards.cot.program_text` builds it for the reward and evaluation).

The answer trigger, the program header and the gold-answer parsing belong to :mod:`reft_trl.rewards` (the answer
and CoT formats have one owner); this module only lays out prompts and targets with them.

Conversational format (``chat=True``, for instruct models with a chat template): the prompt is
``[{"role": "user", "content": <standard prompt>}]`` and an SFT completion is one assistant message. TRL's
GRPO generation always opens a fresh assistant turn, so a program header cannot be pre-filled there: in the
conversational format the assistant writes the **whole** program (header included) and ``completion_prefix``
is empty.
"""

from __future__ import annotations

import re

from reft_trl.rewards.cot import check_cot, python_header, split_program
from reft_trl.rewards.extractors import ANSWER_TRIGGER, normalize_number

INSTRUCTION = "Question:\n"
COT_TRIGGER = "\nAnswer reasoning:\n"
PROMPT_TEMPLATE = INSTRUCTION + "{question}" + COT_TRIGGER
"""``PROMPT_TEMPLATE.format(question=question.strip())`` is the reference prompt."""

_GSM8K_FINAL_RE = re.compile(r"\n?####\s*(.*?)\s*$")
# The annotation's own statement of its answer, e.g. "Therefore, the answer is <7>." (ReFT SVAMP N-CoT) or a
# trigger line "Therefore, the answer is: 7".
_STATED_RE = re.compile(r"answer is:?\s*<([^<>\n]*)>|" + re.escape(ANSWER_TRIGGER) + r" ?([^\n]*)$", re.IGNORECASE)


def format_prompt(question: str) -> str:
    """The reference prompt: ``"Question:\\n" + question.strip() + "\\nAnswer reasoning:\\n"``."""
    return PROMPT_TEMPLATE.format(question=question.strip())


def nl_target(cot: str, value: str) -> str:
    """The N-CoT target ``cot.strip() + "\\nTherefore, the answer is: " + value`` (no EOS).

    An empty ``cot`` (an annotation that states the answer without reasoning) gives the answer line alone.
    """
    line = f"{ANSWER_TRIGGER} {value}"
    cot = cot.strip()
    return f"{cot}\n{line}" if cot else line


def parse_gsm8k_answer(answer: str) -> tuple[str, str]:
    """Split a native GSM8K answer into ``(cot, value)``.

    ``cot`` is the reasoning with its ``<<48/2=24>>`` calculator annotations kept and the final ``#### 72`` line
    removed; ``value`` is the final answer with thousands commas stripped. ``nl_target(cot, value)`` then ends with
    ``"Therefore, the answer is: 72"`` in place of ``"#### 72"``. Raises ``ValueError`` without a final ``####`` line.
    """
    if answer.count("####") != 1:
        raise ValueError(f"expected exactly one '#### <value>' line, found {answer.count('####')}")
    match = _GSM8K_FINAL_RE.search(answer)
    if match is None or "\n" in match.group(1) or not match.group(1):
        raise ValueError("the '#### <value>' line must be the last line and carry a value")
    return answer[: match.start()].rstrip(), normalize_number(match.group(1))


def stated_answer(cot: str) -> str | None:
    """The answer an N-CoT annotation states itself, or ``None``.

    Recognises the ReFT SVAMP form ``"... Therefore, the answer is <7>."`` (``<...>`` after ``answer is``) and a
    trigger line ``"Therefore, the answer is: 7"``; the last occurrence wins.
    """
    found = None
    for match in _STATED_RE.finditer(cot.strip()):
        found = match.group(1) if match.group(1) is not None else match.group(2)
    return found.strip() if found is not None else None


def messages(content: str, role: str = "user") -> list[dict[str, str]]:
    """One chat message as TRL's conversational format expects it: ``[{"role": role, "content": content}]``."""
    return [{"role": role, "content": content}]


def sft_example(
    question: str, answer_cot: str, answer_value: str, cot: str = "nl", *, chat: bool = False, answer_line: bool = True
) -> dict:
    """A TRL prompt-completion pair for SFT.

    ``cot="nl"``: completion = :func:`nl_target`, or with ``answer_line=False`` (MATH, whose solutions state their
    answer in a ``\\boxed{}``) the stripped ``answer_cot`` as written. ``cot="python"``: ``answer_cot`` is the whole
    program; in the standard format the header (rebuilt from ``question``) ends the prompt and the completion is the
    body, in the conversational format the completion is the whole program with that header.
    """
    check_cot(cot)
    prompt = format_prompt(question)
    if cot == "nl":
        completion = nl_target(answer_cot, answer_value) if answer_line else answer_cot.strip()
        header = ""
    else:
        header = python_header(question)
        completion = split_program(answer_cot)[1]
    if chat:
        return {"prompt": messages(prompt), "completion": messages(header + completion, "assistant")}
    return {"prompt": prompt + header, "completion": completion}


def prompt_example(question: str, cot: str = "nl", *, chat: bool = False) -> dict:
    """A TRL prompt-only row for RL and evaluation: ``{"prompt", "completion_prefix"}``.

    ``completion_prefix`` is the text that precedes a generated completion in the full CoT: the program header
    for standard P-CoT (it ends the prompt), ``""`` otherwise. ``completion_prefix + completion`` is what the
    reward scores (for P-CoT, the whole program starting at ``def solution():``).
    """
    check_cot(cot)
    prompt = format_prompt(question)
    if chat:
        return {"prompt": messages(prompt), "completion_prefix": ""}
    prefix = python_header(question) if cot == "python" else ""
    return {"prompt": prompt + prefix, "completion_prefix": prefix}
