"""Compare trained models on held-out splits and plot their training curves (the demo's and `make results`' report).

    python recipes/report.py --dataset synthetic --data_path D/task --eval_splits test_iid,test_ood \
        --run "Warm-up (SFT epoch 2)=D/sft/checkpoint-250" "SFT=D/sft" "ReFT=D/reft" --output_dir D

Each `LABEL=PATH` after `--run` is a saved model; when PATH (or its parent, for a checkpoint) holds the recipe's
`log_history.json`, its held-out accuracy and (for RL runs) its training reward are plotted against the step.
`--offset LABEL=STEPS ...` shifts a run's curve (e.g. ReFT starts at the warm-up's step).
`--evaluation LABEL=DIR ...` adds the voting@k / rerank@k / pass@k columns from a `recipes/evaluate.py` output
folder (its results.json) to that model's row. Writes `report.md`, `report.json` and `curves.png` to --output_dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.evaluation import answer_accuracy


@dataclass
class ReportArguments:
    run: list[str] = field(default_factory=list, metadata={"help": "LABEL=PATH of each saved model to compare."})
    offset: list[str] = field(default_factory=list, metadata={"help": "LABEL=STEPS: shift the run's curves."})
    evaluation: list[str] = field(
        default_factory=list, metadata={"help": "LABEL=DIR: recipes/evaluate.py results to add to LABEL's row."}
    )
    eval_splits: str = field(default="test", metadata={"help": "Comma-separated held-out splits."})
    output_dir: str = field(default="outputs/report")
    max_new_tokens: int = field(default=128)
    batch_size: int = field(default=200)
    title: str = field(default="Held-out accuracy (greedy)")


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--{what} {item!r}: expected LABEL=VALUE.")
        label, value = item.rsplit("=", 1)
        pairs[label] = value
    return pairs


def _history(path: Path) -> list[dict] | None:
    for candidate in (path / "log_history.json", path.parent / "log_history.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return None


def evaluate_runs(data_args: DataArguments, args: ReportArguments) -> dict:
    runs = _pairs(args.run, "run")
    splits = [s for s in args.eval_splits.split(",") if s]
    rows = {split: data_args.load(split, "rl", limit=data_args.max_eval_samples) for split in splits}
    results = {}
    for label, path in runs.items():
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        scores = {}
        for split, dataset in rows.items():
            scores[split] = answer_accuracy(
                model,
                tokenizer,
                dataset,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                desc=f"{label} / {split}",
            )
        n = sum(s["n"] for s in scores.values())
        scores["all"] = {
            "accuracy": sum(s["accuracy"] * s["n"] for s in scores.values()) / n,
            "unparsable": sum(s["unparsable"] * s["n"] for s in scores.values()) / n,
            "n": n,
        }
        results[label] = {"path": path, "scores": scores}
        del model
    return results


def attach_evaluations(results: dict, evaluations: dict[str, str]) -> list[str]:
    """Add the largest-k voting / rerank / pass accuracies of each evaluate.py folder to its run; return the columns."""
    columns: list[str] = []
    for label, folder in evaluations.items():
        if label not in results:
            raise ValueError(f"--evaluation {label}={folder}: no --run is labelled {label!r}.")
        summary = json.loads((Path(folder) / "results.json").read_text())
        best: dict[str, dict] = {}
        for r in summary["results"]:
            if r["method"] in ("voting", "rerank", "pass") and r["k"] >= best.get(r["method"], {"k": 0})["k"]:
                best[r["method"]] = r
        extra = {f"{m}@{r['k']}": r["accuracy"] for m, r in best.items()}
        extra["evaluated on"] = f"{summary['split']} (n={summary['n_questions']})"
        results[label]["evaluation"] = extra
        columns += [c for c in extra if c not in columns and c != "evaluated on"]
    return columns


def markdown_table(results: dict, splits: list[str], extra_columns: list[str] = ()) -> str:
    columns = [*splits, "all"]
    header = "| model | " + " | ".join(f"{c} (n={next(iter(results.values()))['scores'][c]['n']})" for c in columns)
    header += "".join(f" | {c}" for c in extra_columns)
    lines = [header + " |", "|---" * (len(columns) + len(extra_columns) + 1) + "|"]
    for label, result in results.items():
        cells = [f"{100 * result['scores'][c]['accuracy']:.1f}" for c in columns]
        extra = result.get("evaluation", {})
        cells += [f"{100 * extra[c]:.1f}" if c in extra else "" for c in extra_columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(runs: dict[str, str], offsets: dict[str, str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'reft-trl[plot]'): no plot.")
        return False
    fig, (acc_ax, reward_ax) = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for label, run_path in runs.items():
        history = _history(Path(run_path))
        if not history:
            continue
        shift = float(offsets.get(label, 0))
        acc = [(e["step"] + shift, 100 * e["eval_accuracy"]) for e in history if "eval_accuracy" in e]
        reward = [(e["step"] + shift, e["reward"]) for e in history if "reward" in e]
        if acc:
            acc_ax.plot(*zip(*acc), marker="o", markersize=3, label=label)
            plotted = True
        if reward:
            reward_ax.plot(*zip(*reward), label=label)
    acc_ax.set(xlabel="training step", ylabel="held-out accuracy (%)", title=title)
    reward_ax.set(xlabel="training step", ylabel="mean reward of sampled completions", title="RL training reward")
    for ax in (acc_ax, reward_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return plotted


def main(data_args: DataArguments, args: ReportArguments) -> dict:
    torch.manual_seed(0)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = [s for s in args.eval_splits.split(",") if s]
    results = evaluate_runs(data_args, args)
    extra_columns = attach_evaluations(results, _pairs(args.evaluation, "evaluation"))
    table = markdown_table(results, splits, extra_columns)
    plotted = plot_curves(_pairs(args.run, "run"), _pairs(args.offset, "offset"), out / "curves.png", args.title)
    report = f"## {args.title}\n\n{table}\n"
    if plotted:
        report += "\n![held-out accuracy and training reward](curves.png)\n"
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps(results, indent=2))
    print(report)
    return results


if __name__ == "__main__":
    parser = TrlParser((DataArguments, ReportArguments))
    main(*parser.parse_args_and_config())
