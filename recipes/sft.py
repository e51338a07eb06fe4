"""SFT warm-up (and the SFT baseline): TRL's SFTTrainer + greedy answer accuracy + a checkpoint per evaluation.

    accelerate launch recipes/sft.py --config recipes/configs/gsm8k_nl_sft.yaml [--model_name_or_path ...]

The warm-up checkpoint for ReFT is an early one (the paper: epoch 2 on GSM8K); the SFT baseline is the best one
(`best_model_checkpoint` in OUTPUT_DIR/accuracy_log.json).
"""

from __future__ import annotations

from _common import train
from trl import ModelConfig, TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.trainers import WarmupSFTConfig, WarmupSFTTrainer


def main(data_args: DataArguments, training_args: WarmupSFTConfig, model_args: ModelConfig):
    trainer = train(WarmupSFTTrainer, data_args, training_args, model_args)
    trainer.accelerator.print(f"best checkpoint: {trainer.state.best_model_checkpoint}")
    return trainer


if __name__ == "__main__":
    parser = TrlParser((DataArguments, WarmupSFTConfig, ModelConfig))
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    main(*parser.parse_args_and_config()).accelerator.end_training()
