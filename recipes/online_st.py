"""Online-ST baseline: ReFT's rollout loop, learning by SFT on the correct samples mixed with the gold CoT.

    accelerate launch recipes/online_st.py --config recipes/configs/gsm8k_nl_reft.yaml --kl_coef 0 \
        --model_name_or_path OUTPUT/sft/checkpoint-N

Online-ST has no config of its own: it takes ReFT's with the KL penalty off (`make online-st-gsm8k`). The PPO settings
of that YAML (`vf_coef`, `cliprange`, `gamma`, ...: ReFTConfig fields that OnlineSTConfig does not have) are logged as
unused; given on the command line they are an error.

Trains on the SFT rows (the gold CoT is the `completion` column); no KL, no value head.
"""

from __future__ import annotations

from dataclasses import fields

from _common import train
from trl import ModelConfig, TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.trainers import OnlineSTConfig, OnlineSTTrainer, ReFTConfig
from reft_trl.trainers.ppo_config_names import parse_args_and_config

PPO_ONLY = {f.name for f in fields(ReFTConfig)} - {f.name for f in fields(OnlineSTConfig)}
"""The settings of a ReFT config that Online-ST leaves out (it reads ReFT's YAML configs)."""


def main(data_args: DataArguments, training_args: OnlineSTConfig, model_args: ModelConfig):
    return train(OnlineSTTrainer, data_args, training_args, model_args)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, OnlineSTConfig, ModelConfig))
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    # a TRL <= 1.12 PPOConfig name it does not know gets a pointer to docs/migrating-from-trl-ppo.md
    main(*parse_args_and_config(parser, unused_config_keys=PPO_ONLY)).accelerator.end_training()
