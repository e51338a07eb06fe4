"""Print the checkpoint of an SFT run (recipes/sft.py) at a given epoch, or its best one.

python recipes/pick_checkpoint.py OUTPUT/sft --epoch 2     # the ReFT warm-up
python recipes/pick_checkpoint.py OUTPUT/sft --best        # the SFT baseline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def pick(run_dir: str, epoch: float | None = None, best: bool = False) -> str:
    log = Path(run_dir) / "accuracy_log.json"
    if not log.exists():
        raise SystemExit(f"{log} not found: run recipes/sft.py with eval_strategy set first.")
    summary = json.loads(log.read_text())
    if best:
        if not summary.get("best_model_checkpoint"):
            raise SystemExit(f"{log} names no best checkpoint (was metric_for_best_model set?).")
        return summary["best_model_checkpoint"]
    saved = [e for e in summary["evaluations"] if e["checkpoint"]]
    matches = [e for e in saved if e["epoch"] is not None and abs(e["epoch"] - epoch) < 1e-6]
    if not matches:
        available = sorted({e["epoch"] for e in saved})
        raise SystemExit(f"No checkpoint at epoch {epoch} in {run_dir}; saved epochs: {available}.")
    return matches[0]["checkpoint"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--epoch", type=float)
    group.add_argument("--best", action="store_true")
    args = parser.parse_args()
    print(pick(args.run_dir, args.epoch, args.best))
    sys.exit(0)
