"""SFT warm-up (and the SFT baseline): TRL's SFTTrainer + greedy answer accuracy + a checkpoint per evaluation.

    accelerate launch recipes/sft.py --config recipes/configs/gsm8k_nl_sft.yaml [--model_name_or_path ...]

The warm-up checkpoint for ReFT is an early one (the paper: epoch 2 on GSM8K); the SFT baseline is the best one
(`best_model_checkpoint` in OUTPUT_DIR/accuracy_log.json).
"""

from __future__ import annotations

from _common import load_tokenizer, model_init_kwargs, write_accuracy_log
from trl import ModelConfig, TrlParser, get_peft_config

from reft_trl.data.args import DataArguments
from reft_trl.trainers import WarmupSFTConfig, WarmupSFTTrainer


def main(data_args: DataArguments, training_args: WarmupSFTConfig, model_args: ModelConfig):
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    task = data_args.task()
    trainer = WarmupSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data_args.train_dataset("sft", task),
        accuracy_dataset=data_args.eval_dataset(task) if training_args.eval_strategy != "no" else None,
        processing_class=load_tokenizer(model_args, training_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    write_accuracy_log(trainer, training_args.output_dir)
    trainer.accelerator.print(f"best checkpoint: {trainer.state.best_model_checkpoint}")
    return trainer


if __name__ == "__main__":
    parser = TrlParser((DataArguments, WarmupSFTConfig, ModelConfig))
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    main(*parser.parse_args_and_config()).accelerator.end_training()
