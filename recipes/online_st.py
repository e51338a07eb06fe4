"""Online-ST baseline: ReFT's rollout loop, learning by SFT on the correct samples mixed with the gold CoT.

    accelerate launch recipes/online_st.py --config recipes/configs/gsm8k_nl_online_st.yaml \
        --model_name_or_path OUTPUT/sft/checkpoint-N

Trains on the SFT rows (the gold CoT is the `completion` column); no KL, no value head.
"""

from __future__ import annotations

from _common import load_tokenizer, model_init_kwargs, write_accuracy_log
from trl import ModelConfig, TrlParser, get_peft_config

from reft_trl.data.args import DataArguments
from reft_trl.trainers import OnlineSTConfig, OnlineSTTrainer


def main(data_args: DataArguments, training_args: OnlineSTConfig, model_args: ModelConfig):
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    task = data_args.task()
    trainer = OnlineSTTrainer(
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
    return trainer


if __name__ == "__main__":
    parser = TrlParser((DataArguments, OnlineSTConfig, ModelConfig))
    # what accelerate asks of every script: destroy the process group (multi-process runs) before exiting
    main(*parser.parse_args_and_config()).accelerator.end_training()
