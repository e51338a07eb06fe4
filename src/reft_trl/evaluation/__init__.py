"""Evaluation: batched sampling (transformers or vLLM), greedy answer accuracy, majority voting, ORM reranking."""

from reft_trl.evaluation.accuracy import answer_accuracy, score_rows
from reft_trl.evaluation.generation import generate_completions, generate_completions_vllm, vllm_available

__all__ = [
    "answer_accuracy",
    "generate_completions",
    "generate_completions_vllm",
    "score_rows",
    "vllm_available",
]
