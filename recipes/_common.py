"""What every recipe does the same way: model kwargs from ModelConfig, the tokenizer, and the accuracy log."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer


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
