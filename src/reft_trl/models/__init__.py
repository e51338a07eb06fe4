"""Value head on the policy's shared trunk (attach, capture, save/load, PEFT-aware), sequence classifiers as rewards
(:class:`RewardModel`) and tiny in-process models."""

from reft_trl.models.reward_model import RewardModel, classifier_scores
from reft_trl.models.value_head import (
    MissingValueHeadError,
    add_value_head,
    capture_values,
    has_value_head,
    load_causal_lm,
    load_model_with_value_head,
    load_value_head,
    value_head_state_dict,
)

__all__ = [
    "MissingValueHeadError",
    "RewardModel",
    "add_value_head",
    "capture_values",
    "classifier_scores",
    "has_value_head",
    "load_causal_lm",
    "load_model_with_value_head",
    "load_value_head",
    "value_head_state_dict",
]
