"""Trainers: ReFT (PPO with a shared-trunk value head), the SFT warm-up, Online self-training and the ORM."""

from reft_trl.trainers.online_st import OnlineSTConfig, OnlineSTTrainer
from reft_trl.trainers.reft_config import ReFTConfig
from reft_trl.trainers.reft_trainer import ReFTTrainer, SeparateCritic
from reft_trl.trainers.sft import WarmupSFTConfig, WarmupSFTTrainer

__all__ = [
    "OnlineSTConfig",
    "OnlineSTTrainer",
    "ReFTConfig",
    "ReFTTrainer",
    "SeparateCritic",
    "WarmupSFTConfig",
    "WarmupSFTTrainer",
]
