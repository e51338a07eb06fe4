"""Evaluation: batched sampling (transformers or vLLM), greedy answer accuracy, majority voting, ORM reranking.

* :mod:`~reft_trl.evaluation.generation` -- ``generate_completions`` (transformers ``generate``, batched).
* :mod:`~reft_trl.evaluation.samplers` -- samplers of k completions per prompt (transformers or vLLM), ``build_sampler``.
* :mod:`~reft_trl.evaluation.records` -- sample records: ``grade_samples``, ``group_by_question``, ``dedup_key``.
* :mod:`~reft_trl.evaluation.shards` -- resumable JSONL shards: ``sample_to_shards``, ``read_samples``,
  ``sample_checkpoint``.
* :mod:`~reft_trl.evaluation.args` -- ``SamplingArguments``, the recipes' sampling flags.
* :mod:`~reft_trl.evaluation.accuracy` -- ``answer_accuracy`` (greedy); :mod:`~reft_trl.evaluation.voting` --
  majority voting, reranking, @k accuracy.

Rows are graded by :func:`reft_trl.rewards.grade_rows` (re-exported here with ``score_rows``), the function the
reward grades with.
"""

from reft_trl.evaluation.accuracy import answer_accuracy
from reft_trl.evaluation.generation import generate_completions, vllm_available
from reft_trl.evaluation.records import group_by_question
from reft_trl.evaluation.samplers import build_sampler
from reft_trl.evaluation.shards import read_samples, sample_to_shards
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
