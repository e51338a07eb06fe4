"""What the recipes do the same way: model kwargs from ModelConfig, the tokenizer, sampling the training questions,
training with the accuracy log."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer
from trl import get_peft_config

from reft_trl.evaluation.shards import sample_checkpoint


def model_init_kwargs(model_args, training_args) -> dict:
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    kwargs.update(training_args.model_init_kwargs or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def load_tokenizer(model_args, training_args):
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def write_accuracy_log(trainer, output_dir: str) -> list[dict]:
    """``eval_accuracy`` at every evaluation (with its checkpoint when one was saved) -> accuracy_log.json, and the
    whole log history (training curves) -> log_history.json."""
    output = Path(output_dir)
    rows = [
        {
            "step": entry["step"],
            "epoch": entry.get("epoch"),
            "accuracy": entry["eval_accuracy"],
            "unparsable": entry.get("eval_unparsable"),
            "checkpoint": str(output / f"checkpoint-{entry['step']}")
            if (output / f"checkpoint-{entry['step']}").exists()
            else None,
        }
        for entry in trainer.state.log_history
        if "eval_accuracy" in entry
    ]
    if trainer.accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        summary = {"evaluations": rows, "best_model_checkpoint": trainer.state.best_model_checkpoint}
        (output / "accuracy_log.json").write_text(json.dumps(summary, indent=2))
        (output / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        for row in rows:
            trainer.accelerator.print(
                f"  step {row['step']:>6}  epoch {row['epoch'] or 0:6.2f}  accuracy {100 * row['accuracy']:6.2f}%"
            )
    return rows


def train(
    trainer_cls,
    data_args,
    training_args,
    model_args,
    train_dataset=None,
    *,
    task=None,
    kind="sft",
    tokenizer=None,
    **kwargs,
):
    """What the training recipes share: ``trainer_cls`` on ``model_args``' model and tokenizer (PEFT from
    ``model_args``), trained on ``train_dataset`` (default: the ``kind`` rows of ``data_args``' training split) with
    greedy accuracy on ``data_args``' eval split when ``eval_strategy`` is set; resumed from
    ``resume_from_checkpoint``, saved to ``output_dir`` with its accuracy log. ``kwargs`` go to ``trainer_cls``.

    ``data_args=None``: a recipe that brings its own ``train_dataset`` (and ``eval_dataset`` in ``kwargs``) and no
    answer-accuracy evaluation (recipes/ppo.py). ``tokenizer``: one the recipe already loaded with
    :func:`load_tokenizer` (default: loaded here)."""
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    accuracy_dataset = None
    if data_args is not None:
        task = task or data_args.task()
        train_dataset = data_args.train_dataset(kind, task) if train_dataset is None else train_dataset
        accuracy_dataset = data_args.eval_dataset(task) if training_args.eval_strategy != "no" else None
    if data_args is not None and data_args.tools:
        # RL trainers run the tools in their rollouts (TRL's tools=); the SFT warm-up in its accuracy evaluation
        from trl import GRPOTrainer

        kwargs["tools" if issubclass(trainer_cls, GRPOTrainer) else "accuracy_tools"] = data_args.tool_functions()
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        accuracy_dataset=accuracy_dataset,
        processing_class=tokenizer or load_tokenizer(model_args, training_args),
        peft_config=get_peft_config(model_args),
        **kwargs,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    write_accuracy_log(trainer, training_args.output_dir)
    return trainer


def sample_training_questions(model_name_or_path, rows, sampling_args, training_args, model_kwargs) -> list[dict]:
    """Every sample record of ``rows`` from the checkpoint ``model_name_or_path``, sampled into graded, resumable
    shards under ``--samples_dir`` (default: OUTPUT_DIR/samples); see ``reft_trl.evaluation.shards``."""
    return sample_checkpoint(
        model_name_or_path,
        rows,
        sampling_args,
        sampling_args.samples_dir or Path(training_args.output_dir) / "samples",
        model_kwargs=model_kwargs,
        tokenizer_kwargs={"trust_remote_code": training_args.trust_remote_code},
        progress=not training_args.disable_tqdm,
    )
