"""ReFT: PPO from the SFT warm-up checkpoint on (question, gold answer) pairs.

    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/reft.py \
        --config recipes/configs/gsm8k_nl_reft.yaml --model_name_or_path OUTPUT/sft/checkpoint-N

The reward is reft_trl.rewards.AnswerReward on the dataset's `answer` column (1 correct / partial_reward wrong /
0 unparsable; P-CoT programs run in the sandbox). With `eval_strategy` set, greedy accuracy on `eval_split` is logged
as `eval_accuracy` (OUTPUT_DIR/accuracy_log.json).
"""

from __future__ import annotations

from _common import train
from trl import ModelConfig, TrlParser, get_quantization_config

from reft_trl.data.args import DataArguments
from reft_trl.trainers import ReFTConfig, ReFTTrainer
from reft_trl.trainers.ppo_config_names import parse_args_and_config


def main(data_args: DataArguments, training_args: ReFTConfig, model_args: ModelConfig):
    quantization_config = get_quantization_config(model_args)
    return train(ReFTTrainer, data_args, training_args, model_args, kind="rl", quantization_config=quantization_config)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, ReFTConfig, ModelConfig))
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    # a TRL <= 1.12 PPOConfig name it does not know gets a pointer to docs/migrating-from-trl-ppo.md
    main(*parse_args_and_config(parser)).accelerator.end_training()
