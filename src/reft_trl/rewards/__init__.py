"""Rewards for ReFT: answer extraction and comparison, the 1 / 0.1 / 0 reward, TRL reward callables.

Light on purpose: importing this package does not import torch, transformers or TRL, so that answers can be scored
without them. P-CoT programs run in :mod:`reft_trl.sandbox`, whose ``run_programs``, ``SandboxPool`` and
``describe_isolation`` are re-exported here.

    >>> from reft_trl.rewards import score_completion
    >>> score_completion("3 + 4 = 7\\nTherefore, the answer is: 7", "7.0")
    1.0
    >>> score_completion("Therefore, the answer is: 8", "7")
    0.1

This package owns the answer formats (:mod:`reft_trl.rewards.extractors`: the trigger, number and letter parsing,
the registry; see it for the accepted spellings and how to register a new format; the optional LaTeX format
``"math"`` on math-verify is :mod:`reft_trl.rewards.math_answers`) and the CoT formats
(:mod:`reft_trl.rewards.cot`: the P-CoT program header and program text); ``reft_trl.data`` imports them. See
:class:`AnswerReward` for use as ``reward_funcs`` in ``trl.GRPOTrainer`` / ``trl.RLOOTrainer`` / ``ReFTTrainer``.
"""

from reft_trl.rewards.cot import COT_FORMATS, completion_text, program_text, python_header, split_program
from reft_trl.rewards.extractors import (
    ANSWER_TRIGGER,
    AnswerFormat,
    get_answer_format,
    multiple_choice_format,
    normalize_number,
    numeric_format,
    parse_choice,
    parse_number,
    register_answer_format,
)
from reft_trl.rewards.math_answers import extract_math_answer, last_boxed, math_format, math_gold_text
from reft_trl.rewards.scoring import (
    AnswerReward,
    Outcome,
    grade_completions,
    grade_rows,
    score_completion,
    score_completions,
    score_rows,
)
from reft_trl.sandbox import SandboxPool, describe_isolation, run_programs

__all__ = [
    "ANSWER_TRIGGER",
    "COT_FORMATS",
    "AnswerFormat",
    "AnswerReward",
    "Outcome",
    "SandboxPool",
    "completion_text",
    "describe_isolation",
    "get_answer_format",
    "extract_math_answer",
    "grade_completions",
    "grade_rows",
    "last_boxed",
    "math_format",
    "math_gold_text",
    "multiple_choice_format",
    "normalize_number",
    "numeric_format",
    "parse_choice",
    "parse_number",
    "program_text",
    "python_header",
    "register_answer_format",
    "run_programs",
    "score_completion",
    "score_completions",
    "score_rows",
    "split_program",
]
