"""Models: the value function (a head on the policy's shared trunk, or a separate critic), where a run saves it
(beside the policy, so every model folder is a plain causal LM), the checks vLLM makes on a folder, sequence
classifiers as rewards (:class:`RewardModel`) and tiny in-process models.

``python -m reft_trl.models export SRC DST`` rewrites a folder of an earlier layout; ``python -m reft_trl.models check
FOLDER`` says whether vLLM would load it."""

from reft_trl.models.critic import SeparateCritic, build_critic
from reft_trl.models.export import export
from reft_trl.models.reward_model import RewardModel, classifier_scores
from reft_trl.models.serving import check_adapter, check_servable
from reft_trl.models.value_head import (
    MissingValueHeadError,
    add_value_head,
    capture_values,
    has_value_head,
    unwrap_causal_lm,
    value_head_state_dict,
)
from reft_trl.models.value_model import (
    VALUE_MODEL_DIR,
    load_causal_lm,
    load_model_with_value_head,
    load_value_model,
    save_value_model,
    saved_value_model,
)

__all__ = [
    "VALUE_MODEL_DIR",
    "MissingValueHeadError",
    "RewardModel",
    "SeparateCritic",
    "add_value_head",
    "build_critic",
    "capture_values",
    "check_adapter",
    "check_servable",
    "classifier_scores",
    "export",
    "has_value_head",
    "load_causal_lm",
    "load_model_with_value_head",
    "load_value_model",
    "save_value_model",
    "saved_value_model",
    "unwrap_causal_lm",
    "value_head_state_dict",
]
