"""Trainers: ReFT (PPO with a shared-trunk value head) and Online self-training, siblings on one rollout base
(:mod:`reft_trl.trainers.rollout`), the SFT warm-up, Offline self-training data and the ORM."""

from reft_trl.trainers.offline_st import offline_st_dataset, select_correct_samples
from reft_trl.trainers.online_st import OnlineSTConfig, OnlineSTTrainer
from reft_trl.trainers.orm import (
    ORMConfig,
    ORMReward,
    build_orm_dataset,
    load_orm,
    load_orm_tokenizer,
    orm_scores,
    orm_trainer,
)
from reft_trl.trainers.reft_config import ReFTConfig
from reft_trl.trainers.reft_trainer import ReFTTrainer
from reft_trl.trainers.rollout import RewardFunctionError, RolloutTrainer
from reft_trl.trainers.sft import WarmupSFTConfig, WarmupSFTTrainer

__all__ = [
    "ORMConfig",
    "ORMReward",
    "OnlineSTConfig",
    "OnlineSTTrainer",
    "ReFTConfig",
    "ReFTTrainer",
    "RewardFunctionError",
    "RolloutTrainer",
    "WarmupSFTConfig",
    "WarmupSFTTrainer",
    "build_orm_dataset",
    "load_orm",
    "load_orm_tokenizer",
    "offline_st_dataset",
    "orm_scores",
    "orm_trainer",
    "select_correct_samples",
]
