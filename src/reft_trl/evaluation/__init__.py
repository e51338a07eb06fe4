"""Evaluation: batched sampling (transformers or vLLM), greedy answer accuracy, majority voting, ORM reranking."""

from reft_trl.evaluation.accuracy import answer_accuracy
from reft_trl.evaluation.generation import generate_completions, vllm_available
from reft_trl.evaluation.sampling import build_sampler, group_by_question, read_samples, sample_to_shards
from reft_trl.evaluation.voting import at_k_accuracy, default_ks, majority_vote, majority_vote_index, rerank_index
from reft_trl.rewards import grade_rows, score_rows

__all__ = [
    "answer_accuracy",
    "generate_completions",
    "grade_rows",
    "score_rows",
    "vllm_available",
    "at_k_accuracy",
    "build_sampler",
    "default_ks",
    "group_by_question",
    "majority_vote",
    "majority_vote_index",
    "read_samples",
    "rerank_index",
    "sample_to_shards",
]
