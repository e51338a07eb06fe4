"""Train the outcome reward model (ORM) used for rerank@k by recipes/evaluate.py.

    accelerate launch recipes/orm.py --config recipes/configs/gsm8k_nl_orm.yaml --model_name_or_path OUTPUT/sft

1. Sample `--num_samples` CoTs per training question at T=1.0 from `--sampler_model_name_or_path` (default: the
   checkpoint the ORM starts from) into graded, resumable shards (OUTPUT_DIR/samples; `--samples_dir` reuses a
   folder, e.g. Offline-ST's, when it was sampled with the same settings).
2. Label them (1 correct, 0 wrong or unparsable; `--include_unparsable false` drops the unparsable ones),
   de-duplicated per question (reft_trl.trainers.orm.build_orm_dataset). Counts go to OUTPUT_DIR/orm_summary.json.
3. Train a 2-label AutoModelForSequenceClassification initialised from `--model_name_or_path` (the final SFT or
   ReFT checkpoint) with transformers' Trainer: 3 epochs, lr 1e-6, batch 24, max length 700 by default.
4. Save classifier + tokenizer to OUTPUT_DIR: `recipes/evaluate.py --orm_model_name_or_path OUTPUT_DIR`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from _common import sample_training_questions
from trl import ModelConfig, TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.evaluation.args import SamplingArguments
from reft_trl.trainers.orm import ORMConfig, build_orm_dataset, load_orm, load_orm_tokenizer, orm_trainer


@dataclass
class ORMArguments:
    sampler_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint that samples the training CoTs (default: --model_name_or_path)."}
    )


def main(
    data_args: DataArguments,
    orm_args: ORMArguments,
    sampling_args: SamplingArguments,
    training_args: ORMConfig,
    model_args: ModelConfig,
):
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the SFT or ReFT checkpoint the ORM starts from.")
    if model_args.use_peft:
        raise NotImplementedError("recipes/orm.py trains the full classifier; --use_peft is not supported.")
    model_kwargs = {
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": training_args.trust_remote_code,
    }
    model_kwargs = {k: v for k, v in model_kwargs.items() if v is not None}
    output = Path(training_args.output_dir)
    rows = list(data_args.train_dataset("rl", data_args.task()))
    sampler = orm_args.sampler_model_name_or_path or model_args.model_name_or_path
    samples = sample_training_questions(sampler, rows, sampling_args, training_args, model_kwargs)
    tokenizer = load_orm_tokenizer(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    dataset, stats = build_orm_dataset(
        rows, samples, include_unparsable=training_args.include_unparsable, tokenizer=tokenizer
    )
    model = load_orm(model_args.model_name_or_path, tokenizer, revision=model_args.model_revision, **model_kwargs)
    trainer = orm_trainer(model, tokenizer, training_args, dataset)
    if trainer.accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        summary = {"model": model_args.model_name_or_path, "sampler": sampler, **stats}
        summary.update(num_samples=sampling_args.num_samples, include_unparsable=training_args.include_unparsable)
        (output / "orm_summary.json").write_text(json.dumps(summary, indent=2))
        trainer.accelerator.print(
            f"ORM data: {stats['rows']} distinct samples ({stats['positives']} correct, {stats['negatives']} "
            f"not) from {stats['questions']} questions; {stats['duplicates_removed']} duplicates removed."
        )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)  # the tokenizer too (processing_class)
    return trainer, stats


if __name__ == "__main__":
    parser = TrlParser((DataArguments, ORMArguments, SamplingArguments, ORMConfig, ModelConfig))
    main(*parser.parse_args_and_config())
