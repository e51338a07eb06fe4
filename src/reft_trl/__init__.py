"""reft-trl: ReFT (Reasoning with REinforced Fine-Tuning, arXiv 2401.08967) on Hugging Face TRL.

The public names are imported lazily so that ``import reft_trl.rewards`` (answer scoring, reward callables) and
``import reft_trl.sandbox`` (the sandbox's parent side) do not pull in torch, transformers and TRL. Sandbox workers
import nothing from this package: they run the standalone ``reft_trl/sandbox/_worker.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.0"

_LAZY = {
    # RL math
    "token_rewards": "reft_trl.core",
    "gae": "reft_trl.core",
    "masked_whiten": "reft_trl.core",
    "policy_loss": "reft_trl.core",
    "value_loss": "reft_trl.core",
    # rewards
    "score_completion": "reft_trl.rewards",
    "score_completions": "reft_trl.rewards",
    "AnswerReward": "reft_trl.rewards",
    # the sandbox
    "run_programs": "reft_trl.sandbox",
    # evaluation
    "majority_vote": "reft_trl.evaluation",
    # trainers
    "ReFTConfig": "reft_trl.trainers",
    "ReFTTrainer": "reft_trl.trainers",
    "ORMReward": "reft_trl.trainers",
    # reward models as rewards
    "RewardModel": "reft_trl.models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reft_trl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
