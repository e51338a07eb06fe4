"""``SamplingArguments``: the sampling part of the command line / YAML of the recipes that sample k completions per
question (``recipes/evaluate.py``, ``recipes/offline_st.py``, ``recipes/orm.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["BACKENDS", "SamplingArguments"]

BACKENDS = ("auto", "vllm", "transformers")
"""How completions are sampled: vLLM when installed and on GPU (``auto``), or the one named."""


@dataclass
class SamplingArguments:
    """How the recipes sample k completions per question (paper: 100 samples at T=1.0): the self-training and ORM
    recipes on the training questions, ``recipes/evaluate.py`` (its ``EvaluateArguments`` extend these) on the test
    questions."""

    min_num_samples: ClassVar[int] = 1

    num_samples: int = field(default=100, metadata={"help": "Completions sampled per question (the paper's k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering (0: none, as the paper)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1.0: none, as the paper)."})
    max_new_tokens: int = field(default=700, metadata={"help": "Generation budget per completion."})
    sampling_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generate() call (transformers backend); each gives num_samples."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Shard i is sampled with seed sampling_seed + i."})
    backend: str = field(
        default="auto", metadata={"help": "'vllm', 'transformers', or 'auto' (vLLM when installed and on GPU)."}
    )
    shard_size: int = field(default=64, metadata={"help": "Questions per shard file (the unit of resumption)."})
    samples_dir: str | None = field(
        default=None, metadata={"help": "Shard folder (default: OUTPUT_DIR/samples); a rerun resumes it."}
    )
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM's share of GPU memory."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: expected one of {BACKENDS}.")
        if self.num_samples < self.min_num_samples:
            raise ValueError(f"num_samples must be >= {self.min_num_samples}, got {self.num_samples}.")

    def settings(self, model_name_or_path: str) -> dict[str, Any]:
        """What, besides the questions, determines the samples (recorded in the shard folder's meta.json)."""
        return {
            "model": str(model_name_or_path),
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }
