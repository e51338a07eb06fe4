"""Compare trained models on held-out splits and plot their training curves (the demo's and `make results`' report).

    python recipes/report.py --dataset synthetic --data_path D/task --eval_splits test_iid,test_ood \
        --run "Warm-up (SFT epoch 2)=D/sft/checkpoint-250" "SFT=D/sft" "ReFT=D/reft" --output_dir D

Each `LABEL=PATH` after `--run` is a saved model; when PATH (or its parent, for a checkpoint) holds the recipe's
`log_history.json`, its held-out accuracy and (for RL runs) its training reward are plotted against the step.
`LABEL=PATH1,PATH2,...` is one method trained with several seeds: its row shows the mean ± standard deviation over
the seeds (and each seed's value), its curves the mean with the seeds' range shaded.
`--offset LABEL=STEPS ...` shifts a run's curve (e.g. ReFT starts at the warm-up's step).
`--evaluation LABEL=DIR ...` adds the voting@k / rerank@k / pass@k columns from a `recipes/evaluate.py` output
folder (its results.json) to that model's row. `--step_time true` adds each run's training seconds per step (its
train_runtime less the time of its evaluations, over its steps). Writes `report.md`, `report.json` and `curves.png`
to --output_dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer
from trl import TrlParser

from reft_trl.data.args import DataArguments
from reft_trl.evaluation import answer_accuracy
from reft_trl.models import load_causal_lm


@dataclass
class ReportArguments:
    run: list[str] = field(
        default_factory=list,
        metadata={"help": "LABEL=PATH of each saved model to compare (LABEL=PATH1,PATH2,...: one run per seed)."},
    )
    offset: list[str] = field(
        default_factory=list,
        metadata={
            "help": "LABEL=STEPS: shift the run's curves (LABEL=STEPS:FROM: its accuracy curve starts at run FROM's "
            "evaluation at STEPS, for reports with several unshifted runs)."
        },
    )
    compare: list[str] = field(
        default_factory=list,
        metadata={
            "help": "PREFIX=REPORT_JSON: add the rows of another report (its report.json, not re-evaluated: e.g. the "
            "P-CoT demo's beside the tool demo's) with PREFIX before their labels, and their curves."
        },
    )
    evaluation: list[str] = field(
        default_factory=list, metadata={"help": "LABEL=DIR: recipes/evaluate.py results to add to LABEL's row."}
    )
    eval_splits: str = field(default="test", metadata={"help": "Comma-separated held-out splits."})
    output_dir: str = field(default="outputs/report")
    max_new_tokens: int = field(default=128)
    batch_size: int = field(default=200)
    title: str = field(default="Held-out accuracy (greedy)")
    step_time: bool = field(
        default=False,
        metadata={"help": "Add a column with each run's training seconds per step (evaluations excluded)."},
    )


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


def _runs(items: list[str]) -> dict[str, list[str]]:
    runs = {label: [p for p in value.split(",") if p] for label, value in _pairs(items, "run").items()}
    for label, paths in runs.items():
        if not paths:
            raise ValueError(f"--run {label}=: no model path.")
    return runs


def _evaluate_model(path: str, rows: dict, args: ReportArguments, desc: str, tools=None) -> dict:
    model = load_causal_lm(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    scores = {
        split: answer_accuracy(
            model,
            tokenizer,
            dataset,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            desc=f"{desc} / {split}",
            tools=tools,
        )
        for split, dataset in rows.items()
    }
    n = sum(s["n"] for s in scores.values())
    scores["all"] = {
        "accuracy": sum(s["accuracy"] * s["n"] for s in scores.values()) / n,
        "unparsable": sum(s["unparsable"] * s["n"] for s in scores.values()) / n,
        "n": n,
    }
    return scores


def seconds_per_step(history: list[dict] | None) -> float | None:
    """Training seconds per optimizer step of a run trained in one call: ``train_runtime`` less every evaluation's
    ``eval_runtime``, over its steps."""
    if not history or "train_runtime" not in history[-1] or not history[-1].get("step"):
        return None
    evaluation = sum(e.get("eval_runtime", 0.0) for e in history)
    return (history[-1]["train_runtime"] - evaluation) / history[-1]["step"]


def seed_statistics(per_seed: list[dict]) -> dict:
    """Mean over seeds of each split's accuracy and unparsable rate, with the sample standard deviation and values."""
    out = {}
    for split in per_seed[0]:
        accuracies = torch.tensor([s[split]["accuracy"] for s in per_seed], dtype=torch.float64)
        out[split] = {
            "accuracy": accuracies.mean().item(),
            "std": accuracies.std().item() if len(per_seed) > 1 else 0.0,
            "values": accuracies.tolist(),
            "unparsable": sum(s[split]["unparsable"] for s in per_seed) / len(per_seed),
            "n": per_seed[0][split]["n"],
        }
    return out


def evaluate_runs(data_args: DataArguments, args: ReportArguments) -> dict:
    splits = [s for s in args.eval_splits.split(",") if s]
    rows = {split: data_args.load(split, "rl", limit=data_args.max_eval_samples) for split in splits}
    results = {}
    tools = data_args.tool_functions()
    for label, paths in _runs(args.run).items():
        if len(paths) == 1:
            results[label] = {"path": paths[0], "scores": _evaluate_model(paths[0], rows, args, label, tools)}
            continue
        per_seed = [
            _evaluate_model(p, rows, args, f"{label} ({i + 1}/{len(paths)})", tools) for i, p in enumerate(paths)
        ]
        results[label] = {"paths": paths, "per_seed": per_seed, "scores": seed_statistics(per_seed)}
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


def attach_step_times(results: dict) -> list[str]:
    """Add each run's training seconds per step (mean over seeds) as the ``s/step`` column."""
    for result in results.values():
        times = [seconds_per_step(_history(Path(p))) for p in result.get("paths", [result.get("path")])]
        if times and all(t is not None for t in times):
            result.setdefault("evaluation", {})["s/step"] = sum(times) / len(times)
    return ["s/step"]


def markdown_table(results: dict, splits: list[str], extra_columns: list[str] = ()) -> str:
    """One row per run; a run over several seeds shows mean ± standard deviation and, last, each seed's 'all'."""
    columns = [*splits, "all"]
    seeded = any("per_seed" in r for r in results.values())
    header = "| model | " + " | ".join(f"{c} (n={next(iter(results.values()))['scores'][c]['n']})" for c in columns)
    header += "".join(f" | {c}" for c in extra_columns) + (" | all, each seed" if seeded else "")
    lines = [header + " |", "|---" * (len(columns) + len(extra_columns) + 1 + seeded) + "|"]
    for label, result in results.items():
        scores = result["scores"]
        cells = [_percent(scores[c]) for c in columns]
        extra = result.get("evaluation", {})
        cells += [_extra_cell(c, extra) for c in extra_columns]
        if seeded:
            cells.append(" / ".join(f"{100 * v:.1f}" for v in scores["all"].get("values", [])))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _extra_cell(column: str, extra: dict) -> str:
    if column not in extra:
        return ""
    return f"{extra[column]:.2f}" if column == "s/step" else f"{100 * extra[column]:.1f}"


def _percent(score: dict) -> str:
    if "std" in score:
        return f"{100 * score['accuracy']:.1f} ± {100 * score['std']:.1f}"
    return f"{100 * score['accuracy']:.1f}"


def seed_curve(histories: list[list[dict]], key: str, shift: float = 0.0, scale: float = 1.0):
    """(steps, mean, low, high) of ``key`` over the runs' log histories: the i-th logged value of every run, at the
    mean of their steps (seeds of one recipe log at the same points; an epoch's last step can differ by one)."""
    per_run = [sorted((e["step"], scale * e[key]) for e in history if key in e) for history in histories]
    n = min(len(points) for points in per_run)
    if n == 0:
        return None
    table = torch.tensor([[points[i] for points in per_run] for i in range(n)], dtype=torch.float64)  # n x runs x 2
    steps, values = table[..., 0].mean(1) + shift, table[..., 1]
    return steps.tolist(), values.mean(1).tolist(), values.min(1).values.tolist(), values.max(1).values.tolist()


def curves(runs: dict[str, list[str]], offsets: dict[str, str]) -> dict[str, dict[str, tuple]]:
    """``{label: {key: (steps, mean, low, high)}}`` of every run's held-out accuracy (%) and RL reward, shifted by its
    offset. A shifted run starts from a checkpoint of another run (ReFT from the warm-up's step 500): its accuracy
    curve starts at that point, the other run's evaluation at that step, rather than at its own first evaluation."""
    histories = {label: [_history(Path(p)) for p in paths] for label, paths in runs.items()}
    histories = {label: h for label, h in histories.items() if all(h)}
    shifts = {label: str(value).partition(":") for label, value in offsets.items()}
    unshifted = [label for label in histories if not float(shifts.get(label, ("0",))[0])]
    evaluated = {  # the runs that start from nothing (no offset): where the shifted ones start from
        label: {e["step"]: e["eval_accuracy"] for e in histories[label][0] if "eval_accuracy" in e}
        for label in unshifted
    }
    result = {}
    for label, runs_of_label in histories.items():
        shift_text, _, source = shifts.get(label, ("0", "", ""))
        shift = float(shift_text)
        sources = [source] if source else unshifted
        result[label] = {}
        for key, scale in (("eval_accuracy", 100.0), ("reward", 1.0)):
            curve = seed_curve(runs_of_label, key, shift, scale)
            if curve is None:
                continue
            starts = [evaluated[s][int(shift)] for s in sources if int(shift) in evaluated.get(s, {})]
            start = starts[0] if shift and key == "eval_accuracy" and starts else None
            if start is not None:
                curve = tuple([first, *values] for first, values in zip((shift, *[scale * start] * 3), curve))
            result[label][key] = curve
    return result


def plot_curves(runs: dict[str, list[str]], offsets: dict[str, str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'reft-trl[plot]'): no plot.")
        return False
    fig, (acc_ax, reward_ax) = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    seeded = any(len(paths) > 1 for paths in runs.values())
    for index, (label, by_key) in enumerate(curves(runs, offsets).items()):
        color = f"C{index}"  # one colour per run in both panels
        for key, (steps, mean, low, high) in by_key.items():
            ax = acc_ax if key == "eval_accuracy" else reward_ax
            style = {"marker": "o", "markersize": 3} if key == "eval_accuracy" else {}
            ax.plot(steps, mean, label=label, color=color, **style)
            if len(runs[label]) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
            plotted |= key == "eval_accuracy"
    suffix = " (mean; shaded: range over seeds)" if seeded else ""
    acc_ax.set(xlabel="training step", ylabel="held-out accuracy (%)", title=title + suffix)
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
    runs = _runs(args.run)
    results = {}
    for prefix, report_json in _pairs(args.compare, "compare").items():
        for label, result in json.loads(Path(report_json).read_text()).items():
            results[prefix + label] = result
            runs[prefix + label] = result.get("paths", [result.get("path")])
    results.update(evaluate_runs(data_args, args))
    extra_columns = attach_evaluations(results, _pairs(args.evaluation, "evaluation"))
    if args.step_time:
        extra_columns += attach_step_times(results)
    table = markdown_table(results, splits, extra_columns)
    plotted = plot_curves(runs, _pairs(args.offset, "offset"), out / "curves.png", args.title)
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
