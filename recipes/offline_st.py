"""Offline self-training (Offline-ST), the paper's first baseline.

    accelerate launch recipes/offline_st.py --config recipes/configs/gsm8k_nl_sft.yaml --num_train_epochs 20 \
        --warmup_model_name_or_path OUTPUT/sft/checkpoint-N --model_name_or_path BASE_MODEL

1. Sample `--num_samples` (k=100) CoTs per training question at T=1.0 from the warm-up checkpoint, into graded,
   resumable shards (OUTPUT_DIR/samples/shard-NNNNN.jsonl; rerun the command to finish an interrupted run).
2. Keep the correct ones, de-duplicated, at most `--max_per_question` (m=10) per question, and mix them with every
   original SFT row (see reft_trl.trainers.offline_st). Counts go to OUTPUT_DIR/offline_st_summary.json.
3. Fine-tune the *base* model (`--model_name_or_path`) on the mixture with WarmupSFTTrainer: answer accuracy on
   `--eval_split` at every evaluation, a checkpoint per epoch, the best one in OUTPUT_DIR/accuracy_log.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from _common import model_init_kwargs, sample_training_questions, train
from accelerate import PartialState
from trl import ModelConfig, TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.evaluation.args import SamplingArguments
from reft_trl.trainers import WarmupSFTConfig, WarmupSFTTrainer
from reft_trl.trainers.offline_st import offline_st_dataset


@dataclass
class OfflineSTArguments:
    warmup_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The SFT warm-up checkpoint that samples the CoTs (required)."}
    )
    max_per_question: int = field(
        default=10, metadata={"help": "Keep at most this many distinct correct samples per question (paper: 10)."}
    )


def main(
    data_args: DataArguments,
    st_args: OfflineSTArguments,
    sampling_args: SamplingArguments,
    training_args: WarmupSFTConfig,
    model_args: ModelConfig,
):
    if not st_args.warmup_model_name_or_path:
        raise ValueError("--warmup_model_name_or_path is required: the SFT warm-up checkpoint that samples CoTs.")
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the base model Offline-ST fine-tunes.")
    task = data_args.task()
    sampled_rows = list(data_args.train_dataset("rl", task))
    sft_rows = data_args.train_dataset("sft", task)
    output = Path(training_args.output_dir)
    # The base model's revision does not apply to the warm-up checkpoint; dtype/attention settings do.
    sampler_kwargs = {k: v for k, v in model_init_kwargs(model_args, training_args).items() if k != "revision"}
    samples = sample_training_questions(
        st_args.warmup_model_name_or_path, sampled_rows, sampling_args, training_args, sampler_kwargs
    )
    train_dataset, stats = offline_st_dataset(
        sft_rows, sampled_rows, samples, max_per_question=st_args.max_per_question
    )
    state = PartialState()
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        summary = {"warmup_model": st_args.warmup_model_name_or_path, "num_samples": sampling_args.num_samples}
        summary.update(max_per_question=st_args.max_per_question, **stats)
        (output / "offline_st_summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"Offline-ST data: {stats['questions_with_correct']}/{stats['questions']} questions with a correct "
            f"sample, {stats['kept_samples']} samples kept ({stats['duplicates_removed']} duplicates removed), "
            f"{stats['train_rows']} training rows with the {stats['original_rows']} original ones."
        )
    trainer = train(WarmupSFTTrainer, data_args, training_args, model_args, train_dataset, task=task)
    return trainer, stats


if __name__ == "__main__":
    parser = TrlParser((DataArguments, OfflineSTArguments, SamplingArguments, WarmupSFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
