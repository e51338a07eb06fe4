"""Checkpoints that are complete or invisible.

A run can be killed at any moment (preemption, OOM, a full disk), including in the middle of writing a checkpoint.
transformers writes ``checkpoint-N`` file by file and rotates old checkpoints right after its own files, before
reft-trl's rollout state is written; so a kill could leave a partial checkpoint that ``resume_from_checkpoint=True``
picks, or one that resumes without its rollout state, after the previous complete checkpoint was already deleted.

Here, a checkpoint is *complete* when its folder holds :data:`COMPLETE_MARKER`, written last and atomically (after
every file of the checkpoint is flushed to disk), listing every file with its size; a file missing or of another size
makes it incomplete again. :class:`~reft_trl.trainers.rollout.RolloutTrainer` holds transformers' rotation back until
the new checkpoint is complete and then rotates among complete checkpoints only (:func:`rotate_complete`), and
``train(resume_from_checkpoint=True)`` takes :func:`newest_complete`, logging every newer incomplete one it skipped.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "reft_checkpoint_complete.json"
_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mark_complete(folder: str | os.PathLike) -> None:
    """Flush every file of ``folder`` to disk, then write the marker atomically (temporary file + rename)."""
    folder = Path(folder)
    entries = sorted(folder.rglob("*"))
    files = {}
    for path in (p for p in entries if p.is_file() and p.name != COMPLETE_MARKER):
        _fsync(path)
        files[str(path.relative_to(folder))] = path.stat().st_size
    for directory in {p.parent for p in entries} | {folder}:
        _fsync(directory)
    tmp = folder / (COMPLETE_MARKER + ".tmp")
    write_or_explain(tmp, lambda: tmp.write_text(json.dumps({"files": files}, indent=1)))
    _fsync(tmp)
    os.replace(tmp, folder / COMPLETE_MARKER)
    _fsync(folder)


def incomplete_reason(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` when it is."""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        return f"no {COMPLETE_MARKER} (its save was interrupted)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"unreadable {COMPLETE_MARKER} ({err})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def checkpoints_by_step(run_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``run_dir``, oldest first."""
    found = [
        (int(m.group(1)), p) for p in Path(run_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if (m := _STEP.match(p.name))
    ]
    return [p for _, p in sorted(found) if p.is_dir()]


def newest_complete(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint of ``run_dir``; logs the newer incomplete ones it skips."""
    skipped = []
    for folder in reversed(checkpoints_by_step(run_dir)):
        reason = incomplete_reason(folder)
        if reason is None:
            for path, why in skipped:
                logger.warning("Skipping the incomplete checkpoint %s: %s.", path, why)
            return folder
        skipped.append((folder, reason))
    details = "; ".join(f"{p.name}: {why}" for p, why in skipped) or "none at all"
    raise ValueError(f"No complete checkpoint to resume from in {run_dir} ({details}).")


def rotate_complete(run_dir: str | os.PathLike, limit: int | None, protected: list[str | None]) -> None:
    """Delete the oldest complete checkpoints beyond ``limit``, never the newest nor a ``protected`` one (the best
    model). Incomplete checkpoints are neither counted nor deleted here."""
    if not limit or limit <= 0:
        return
    complete = [p for p in checkpoints_by_step(run_dir) if incomplete_reason(p) is None]
    keep = {complete[-1].resolve()} if complete else set()
    keep |= {Path(p).resolve() for p in protected if p}
    excess = len(complete) - max(limit, len(keep))
    for folder in complete:
        if excess <= 0:
            break
        if folder.resolve() not in keep:
            logger.info("Deleting older checkpoint [%s] due to save_total_limit", folder)
            shutil.rmtree(folder, ignore_errors=True)
            excess -= 1


def write_or_explain(path: str | os.PathLike, write):
    """Run ``write()``; a failure to write ``path`` becomes an ``OSError`` that names the file and, when the disk is
    full, says so (torch reports a full disk as ``basic_ios::clear: iostream error``)."""
    try:
        return write()
    except (OSError, RuntimeError) as err:
        raise write_error(path, err) from err


def write_error(path: str | os.PathLike, err: BaseException) -> OSError:
    where = Path(path).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    full = getattr(err, "errno", None) == errno.ENOSPC or free < 1 << 20
    cause = "the disk is full" if full else f"{type(err).__name__}: {err}"
    return OSError(
        errno.ENOSPC if full else getattr(err, "errno", None) or errno.EIO,
        f"Could not write {path}: {cause} ({free / 2**20:.1f} MiB free on its filesystem). The checkpoint being "
        "written stays incomplete and invisible to resume_from_checkpoint; earlier checkpoints are intact.",
    )


def adopt(folder: str | os.PathLike) -> None:
    """Mark a checkpoint written before completion markers existed (reft-trl 0.1) as complete, after checking that it
    holds a readable ``trainer_state.json``, weights and a rollout state for process 0. Refuses anything else."""
    folder = Path(folder)
    if (folder / COMPLETE_MARKER).exists():
        return
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: no readable trainer_state.json ({err}); not a checkpoint to adopt.") from None
    needed = {"weights": ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                          "pytorch_model.bin"), "rollout state": ("reft_rollout_state-0.pt",)}  # fmt: skip
    for what, names in needed.items():
        if not any((folder / name).is_file() for name in names):
            raise ValueError(f"{folder}: no {what} ({' or '.join(names)}); not a checkpoint to adopt.")
    mark_complete(folder)


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] not in ("adopt", "newest"):
        raise SystemExit(
            "usage: python -m reft_trl.trainers.checkpoints adopt CHECKPOINT_DIR [...]\n"
            "       python -m reft_trl.trainers.checkpoints newest RUN_DIR   (prints its newest complete checkpoint)"
        )
    if sys.argv[1] == "newest":
        print(newest_complete(sys.argv[2]))
    for path in sys.argv[2:] if sys.argv[1] == "adopt" else ():
        adopt(path)
        print(f"{path}: marked complete")
