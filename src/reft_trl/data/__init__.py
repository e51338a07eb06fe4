"""Data for ReFT: the reference prompt/target formats, loaders with validation, and the embedded synthetic task.

* :mod:`reft_trl.data.formats` -- ``format_prompt``, ``nl_target``, ``sft_example``, ``prompt_example`` and the
  constants of the reference prompt (pure functions). The answer trigger, ``python_header`` and ``split_program``
  are :mod:`reft_trl.rewards`' (re-exported here), which owns the answer and CoT formats.
* :mod:`reft_trl.data.loaders` -- ``load_gsm8k``, ``load_math`` (MATH-style ``problem``/``solution`` rows),
  ``load_mwp`` (SVAMP, MathQA, MathQA-numeric, the authors' GSM8K files, the synthetic task's files), ``from_records``: ``datasets.Dataset`` rows in TRL's prompt-completion (SFT)
  or prompt-only (RL, evaluation) formats, shaped by the options all loaders share (``LoadOptions``: kind, cot,
  chat, on_invalid, return_stats).
* :mod:`reft_trl.data.synthetic` -- ``TaskConfig``, ``generate_task``, ``write_task``, ``load_synthetic``,
  ``build_tokenizer``: the offline multi-step arithmetic task used by the tests and the CPU demo.
"""

from reft_trl.rewards.cot import python_header, split_program
from reft_trl.rewards.extractors import ANSWER_TRIGGER

from .formats import (
    COT_TRIGGER,
    INSTRUCTION,
    PROMPT_TEMPLATE,
    format_prompt,
    messages,
    nl_target,
    parse_gsm8k_answer,
    prompt_example,
    sft_example,
    stated_answer,
)
from .loaders import (
    DATASETS,
    MATH_HUB_ID,
    DataValidationError,
    LoadOptions,
    LoadStats,
    from_records,
    load_gsm8k,
    load_math,
    load_mwp,
    load_stats,
)
from .synthetic import TaskConfig, build_tokenizer, generate_task, load_synthetic, task_corpus, write_task

__all__ = [
    "ANSWER_TRIGGER",
    "COT_TRIGGER",
    "DATASETS",
    "INSTRUCTION",
    "MATH_HUB_ID",
    "PROMPT_TEMPLATE",
    "DataValidationError",
    "LoadOptions",
    "LoadStats",
    "TaskConfig",
    "build_tokenizer",
    "format_prompt",
    "from_records",
    "generate_task",
    "load_gsm8k",
    "load_math",
    "load_mwp",
    "load_stats",
    "load_synthetic",
    "messages",
    "nl_target",
    "parse_gsm8k_answer",
    "prompt_example",
    "python_header",
    "sft_example",
    "split_program",
    "stated_answer",
    "task_corpus",
    "write_task",
]
