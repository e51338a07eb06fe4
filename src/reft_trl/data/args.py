"""``DataArguments``: the dataset part of every recipe's command line / YAML, and the loader that dispatches it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from .loaders import DATASETS, MATH_HUB_ID, LoadOptions, load_gsm8k, load_math, load_mwp
from .synthetic import TaskConfig, generate_task, load_synthetic


@dataclass
class DataArguments:
    """Which data a recipe trains and evaluates on."""

    dataset: str = field(
        default="gsm8k",
        metadata={"help": f"One of {sorted(DATASETS)} ('synthetic' is the embedded task: no download)."},
    )
    data_path: str | None = field(
        default=None,
        metadata={
            "help": "Local data: GSM8K's OpenAI jsonl file or folder, or a folder/file in the ReFT authors' JSON "
            "layout (svamp_nl.json, svamp_python_sdp.json, svamp_test_set.json, ...), or for 'math' a MATH-style "
            "jsonl/json file or folder (problem, solution with a \\boxed{} answer), or a hub dataset id. "
            f"Default: the hub for GSM8K (openai/gsm8k) and MATH ({MATH_HUB_ID}), generated in memory for 'synthetic'."
        },
    )
    cot: str = field(default="nl", metadata={"help": "'nl' (N-CoT) or 'python' (P-CoT)."})
    chat: bool = field(default=False, metadata={"help": "Render prompts as chat messages (instruct models)."})
    tools: str | None = field(
        default=None,
        metadata={
            "help": "'python': the model calls the sandbox's python tool (reft_trl.sandbox.python_tool). Prompts are "
            "chat messages, SFT targets are the N-CoT annotations as tool-calling conversations "
            "(reft_trl.data.tool_traces; needs cot='nl'), RL rollouts and the accuracy evaluation run the tool. "
            "The tokenizer needs a tool-calling chat template and response_template (e.g. "
            "reft_trl.models.tiny.add_compact_tool_template)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="test",
        metadata={"help": "Split(s) for answer accuracy, '+'-joined to concatenate (e.g. 'test_iid+test_ood')."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the synthetic task."})
    task_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Overrides of reft_trl.data.TaskConfig for the synthetic task (YAML mapping or JSON string)."
        },
    )

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is not one of {sorted(DATASETS)}.")
        if self.cot not in ("nl", "python"):
            raise ValueError(f"cot={self.cot!r}: expected 'nl' or 'python'.")
        if self.tools not in (None, "python"):
            raise ValueError(f"tools={self.tools!r}: the one tool provided is 'python'.")
        if self.tools and self.cot != "nl":
            raise ValueError("tools='python' builds its tool calls from the N-CoT annotations: use cot='nl'.")
        if isinstance(self.task_config, str):  # from the command line
            import json

            self.task_config = json.loads(self.task_config)

    def task(self) -> dict | None:
        """The synthetic task's splits (generated once per call), or None for other datasets."""
        if self.dataset != "synthetic" or self.data_path:
            return None
        return generate_task(TaskConfig(**(self.task_config or {})), self.task_seed)

    def load(self, split: str, kind: str, *, task: dict | None = None, limit: int | None = None) -> Dataset:
        """Rows of ``split`` ('+'-joined splits are concatenated) as SFT (``kind="sft"``) or RL/eval (``"rl"``) rows."""
        parts = [self._load_one(s, kind, task) for s in split.split("+")]
        dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return dataset

    def train_dataset(self, kind: str, task: dict | None = None) -> Dataset:
        return self.load(self.train_split, kind, task=task, limit=self.max_train_samples)

    def eval_dataset(self, task: dict | None = None) -> Dataset | None:
        if not self.eval_split:
            return None
        return self.load(self.eval_split, "rl", task=task, limit=self.max_eval_samples)

    def tool_functions(self) -> list:
        """The tools a ``tools`` run calls (``[python_tool()]``), or ``[]``."""
        from reft_trl.sandbox import python_tool

        return [python_tool()] if self.tools == "python" else []

    def _load_one(self, split: str, kind: str, task: dict | None) -> Dataset:
        rows = self._load_rows(split, task, LoadOptions(kind=kind, cot=self.cot, chat=self.chat or bool(self.tools)))
        if self.tools and kind == "sft":  # tool runs: chat rows, the SFT targets as tool-calling conversations
            from .tool_traces import tool_sft_rows

            return tool_sft_rows(rows)
        return rows

    def _load_rows(self, split: str, task: dict | None, options: LoadOptions) -> Dataset:
        if self.dataset == "synthetic" and not self.data_path:
            task = task if task is not None else self.task()
            return load_synthetic(split, task=task, options=options)
        path = self.data_path
        if self.dataset == "math":
            return load_math(path or MATH_HUB_ID, split=split, options=options)
        if self.dataset == "gsm8k" and (path is None or _is_openai_gsm8k(path)):
            return load_gsm8k(path or "openai/gsm8k", split=split, options=options)
        if path is None:
            raise ValueError(f"dataset={self.dataset!r} needs data_path (a folder or file in the authors' layout).")
        return load_mwp(path, dataset=self.dataset, split=split, options=options)


def _is_openai_gsm8k(path: str | os.PathLike) -> bool:
    """OpenAI's GSM8K layout (``*.jsonl`` with question/answer) rather than the ReFT authors' JSON files."""
    p = Path(path)
    if p.is_file():
        return p.suffix == ".jsonl"
    if p.is_dir():
        return any(p.glob("*.jsonl")) and not any(p.glob("gsm8k_*.json"))
    return True  # a hub id
