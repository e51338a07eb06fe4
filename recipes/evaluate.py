"""Evaluate a checkpoint: top-1 greedy accuracy, majority voting@k and ORM rerank@k from k samples per question.

    python recipes/evaluate.py --dataset gsm8k --model_name_or_path OUTPUT/reft \
        [--orm_model_name_or_path OUTPUT/orm] [--num_samples 100] [--output_dir OUTPUT/eval]

Sampling is batched, with vLLM when installed and on GPU (`--backend auto|vllm|transformers`), transformers
`generate` otherwise, and resumable: the graded samples are written in shards under OUTPUT_DIR/greedy and
OUTPUT_DIR/samples (or `--samples_dir`), and rerunning the same command finishes an interrupted run. The voting@k /
rerank@k curve for every k in `--ks` (default 1, 4, 16, 64, ..., num_samples) comes from the first k of the same
samples. The sampling flags are those of reft_trl.evaluation.args.SamplingArguments (`--batch_size` and
`--seed` still name `--sampling_batch_size` and `--sampling_seed`). Writes:

    greedy.jsonl    one line per question: greedy completion, extracted answer, status, correct
    samples.jsonl   one line per sample (question_index, sample_index, completion, answer, status, correct, gold,
                    orm_score -- P(correct), only for samples with an answer and only with an ORM)
    results.json    {"results": [{"method", "k", "accuracy", "n"}, ...], settings}
    results.md      the same as a markdown table (method | k | accuracy)

Methods: `greedy` (top-1), `voting` (majority vote of the first k samples), `rerank` (the ORM's highest P(correct)
among the first k samples with an answer), `pass` (some sample among the first k is correct: the oracle upper bound)
and `mean` (the average accuracy of one sample at the sampling temperature).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from accelerate import PartialState
from trl import TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.evaluation.args import SamplingArguments
from reft_trl.evaluation.records import group_by_question
from reft_trl.evaluation.samplers import lazy_checkpoint_sampler
from reft_trl.evaluation.shards import read_samples, sample_to_shards
from reft_trl.evaluation.voting import at_k_accuracy, default_ks


@dataclass
class EvaluateArguments(SamplingArguments):
    """How the samples for voting/reranking are taken (:class:`SamplingArguments`; ``--num_samples 0``: greedy only,
    ``--batch_size`` and ``--seed`` are its ``sampling_batch_size`` and ``sampling_seed``) and what to evaluate."""

    min_num_samples: ClassVar[int] = 0
    model_name_or_path: str | None = field(default=None, metadata={"help": "The checkpoint to evaluate (required)."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where samples and results are written."})
    orm_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A trained ORM (recipes/orm.py) for rerank@k; none: no reranking."}
    )
    ks: list[int] | None = field(
        default=None, metadata={"help": "k of the @k curve (default: 1, 4, 16, 64, ... and num_samples)."}
    )
    greedy: bool = field(default=True, metadata={"help": "Also measure top-1 accuracy with greedy decoding."})
    sampling_batch_size: int = field(
        default=8, metadata={"aliases": ["--batch_size"], "help": "Prompts per generate() call (each gives k)."}
    )
    sampling_seed: int = field(
        default=0, metadata={"aliases": ["--seed"], "help": "Sampling seed (shard i uses seed + i)."}
    )
    dtype: str = field(default="auto", metadata={"help": "dtype to load the models in ('auto', 'bfloat16', ...)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the checkpoint."})
    orm_batch_size: int = field(default=16, metadata={"help": "Texts per ORM forward pass."})
    orm_max_length: int = field(default=700, metadata={"help": "Tokens per ORM input (left-truncated)."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self):
        super().__post_init__()
        if self.ks and self.num_samples and not all(1 <= k <= self.num_samples for k in self.ks):
            raise ValueError(f"ks={self.ks}: every k must be between 1 and num_samples={self.num_samples}.")
        if self.orm_model_name_or_path and not self.num_samples:
            raise ValueError("Reranking with an ORM needs samples: set --num_samples >= 1.")


def _write_jsonl(path: Path, records) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _score_with_orm(args: EvaluateArguments, rows, records, device) -> None:
    """Attach ``orm_score`` (P(correct)) to every record with an answer; ``None`` to the others."""
    from reft_trl.trainers.orm import load_orm, load_orm_tokenizer, orm_scores, orm_text

    kwargs = {"trust_remote_code": args.trust_remote_code}
    tokenizer = load_orm_tokenizer(args.orm_model_name_or_path, **kwargs)
    model = load_orm(args.orm_model_name_or_path, tokenizer, dtype=args.dtype, **kwargs).to(device)
    answered = [r for r in records if r["answer"] is not None]
    texts = [orm_text(rows[r["question_index"]]["prompt"], r["completion"], tokenizer) for r in answered]
    scores = orm_scores(
        model,
        tokenizer,
        texts,
        batch_size=args.orm_batch_size,
        max_length=args.orm_max_length,
        progress=not args.disable_tqdm,
    )
    for record in records:
        record["orm_score"] = None
    for record, score in zip(answered, scores):
        record["orm_score"] = score


def results_markdown(results: list[dict]) -> str:
    lines = ["| method | k | accuracy |", "|---|---:|---:|"]
    lines += [f"| {r['method']} | {r['k']} | {100 * r['accuracy']:.2f} |" for r in results]
    return "\n".join(lines) + "\n"


def main(data_args: DataArguments, args: EvaluateArguments) -> dict | None:
    if not args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the checkpoint to evaluate.")
    if not data_args.eval_split:
        raise ValueError("--eval_split is empty: name the split(s) to evaluate on (e.g. 'test').")
    state = PartialState()
    out = Path(args.output_dir)
    samples_dir = args.samples_dir or out / "samples"
    rows = list(data_args.eval_dataset(data_args.task()))
    if not rows:
        raise ValueError(f"The evaluation split {data_args.eval_split!r} has no rows.")
    sampler = lazy_checkpoint_sampler(
        args.model_name_or_path,
        args,
        state,
        model_kwargs={"dtype": args.dtype, "trust_remote_code": args.trust_remote_code},
        tokenizer_kwargs={"trust_remote_code": args.trust_remote_code},
    )
    common = {"rank": state.process_index, "world_size": state.num_processes, "shard_size": args.shard_size}
    progress = not args.disable_tqdm and state.is_main_process
    try:
        if args.greedy:
            sample_to_shards(
                rows,
                out / "greedy",
                sampler,
                num_samples=1,
                do_sample=False,
                settings={"model": args.model_name_or_path, "max_new_tokens": args.max_new_tokens},
                progress=progress,
                desc="greedy",
                **common,
            )
        if args.num_samples:
            sample_to_shards(
                rows,
                samples_dir,
                sampler,
                num_samples=args.num_samples,
                seed=args.sampling_seed,
                settings=args.settings(args.model_name_or_path),
                progress=progress,
                desc=f"sampling {args.num_samples}/question",
                **common,
            )
    finally:
        sampler.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    results: list[dict] = []
    if args.greedy:
        greedy = read_samples(out / "greedy")
        for record in greedy:
            record["gold"] = rows[record["question_index"]]["answer"]
        _write_jsonl(out / "greedy.jsonl", greedy)
        results.append(
            {"method": "greedy", "k": 1, "accuracy": sum(r["correct"] for r in greedy) / len(rows), "n": len(rows)}
        )
    if args.num_samples:
        samples = read_samples(samples_dir)
        if args.orm_model_name_or_path:
            _score_with_orm(args, rows, samples, state.device)
        for record in samples:
            record["gold"] = rows[record["question_index"]]["answer"]
        _write_jsonl(out / "samples.jsonl", samples)
        mean = sum(r["correct"] for r in samples) / len(samples)
        results += at_k_accuracy(
            group_by_question(samples, len(rows)),
            args.ks or default_ks(args.num_samples),
            score_key="orm_score" if args.orm_model_name_or_path else None,
        )
        results.append({"method": "mean", "k": args.num_samples, "accuracy": mean, "n": len(rows)})

    summary = {
        "model": args.model_name_or_path,
        "orm": args.orm_model_name_or_path,
        "dataset": data_args.dataset,
        "cot": data_args.cot,
        "split": data_args.eval_split,
        "n_questions": len(rows),
        "results": results,
        "arguments": asdict(args),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = results_markdown(results)
    (out / "results.md").write_text(table)
    print(f"\n{args.model_name_or_path} on {data_args.dataset} {data_args.eval_split} ({len(rows)} questions):\n")
    print(table)
    return summary


if __name__ == "__main__":
    parser = TrlParser((DataArguments, EvaluateArguments))
    main(*parser.parse_args_and_config())
