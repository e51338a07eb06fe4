"""Build the embedded demo's model from scratch: the synthetic task, a BPE tokenizer trained on it, a small Llama.

    python recipes/tiny_model.py --config recipes/configs/demo/task.yaml --output_dir D/base --task_dir D/task

Writes a normal `save_pretrained` checkpoint (model + tokenizer) to --output_dir, so the SFT and ReFT recipes load it
like any hub model, and the task's files (the ReFT authors' JSON layout) to --task_dir, so every later step reads the
same problems with `--dataset synthetic --data_path D/task`. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from reft_trl.data import TaskConfig, build_tokenizer, task_corpus, write_task
from reft_trl.data.args import DataArguments
from reft_trl.models.tiny import add_compact_tool_template, save_tiny_llama


@dataclass
class TinyModelArguments:
    output_dir: str = field(default="outputs/demo/base", metadata={"help": "Where to save model + tokenizer."})
    task_dir: str | None = field(default=None, metadata={"help": "Where to write the task's JSON files (optional)."})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size (digits are always single tokens)."})
    hidden_size: int = field(default=128)
    num_hidden_layers: int = field(default=4)
    num_attention_heads: int = field(default=4)
    intermediate_size: int = field(default=512)
    max_position_embeddings: int = field(default=512)
    tie_word_embeddings: bool = field(
        default=False, metadata={"help": "Share the input embedding and the LM head (copying tokens is then easier)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the weight initialisation."})
    tool_template: bool = field(
        default=False,
        metadata={
            "help": "Give the tokenizer the compact python-tool chat template (reft_trl.models.tiny."
            "add_compact_tool_template): the tool demo's model (`make demo-tools`)."
        },
    )


def main(data_args: DataArguments, model_args: TinyModelArguments) -> Path:
    if data_args.dataset != "synthetic":
        raise ValueError("tiny_model.py builds a tokenizer for the embedded synthetic task: use --dataset synthetic.")
    task = data_args.task()
    if model_args.task_dir:
        write_task(model_args.task_dir, TaskConfig(**(data_args.task_config or {})), data_args.task_seed, task=task)
    tokenizer = build_tokenizer(task_corpus(task), vocab_size=model_args.vocab_size)
    if model_args.tool_template:
        add_compact_tool_template(tokenizer)
    out = Path(model_args.output_dir)
    model = save_tiny_llama(
        out,
        tokenizer,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        max_position_embeddings=model_args.max_position_embeddings,
        tie_word_embeddings=model_args.tie_word_embeddings,
        seed=model_args.seed,
    )
    n_params = sum(p.numel() for p in model.parameters())
    (out / "task.json").write_text(
        json.dumps({"task_seed": data_args.task_seed, "task_config": data_args.task_config})
    )
    print(f"tiny Llama with {n_params / 1e6:.2f}M parameters and a {len(tokenizer)}-token BPE saved to {out}")
    return out


if __name__ == "__main__":
    parser = TrlParser((DataArguments, TinyModelArguments))
    data_args, model_args = parser.parse_args_and_config()
    main(data_args, model_args)
