"""Sharded, resumable sampling of k completions per question to JSONL, graded as each shard is written.

Used by ``recipes/evaluate.py`` (voting@k, rerank@k), ``recipes/offline_st.py`` (Offline self-training data) and
``recipes/orm.py`` (ORM training data). Sampling 100 completions for each of GSM8K's 7,473 training questions takes
hours, so the work is cut into shards of ``shard_size`` questions and every finished shard is a file::

    OUTPUT_DIR/
      meta.json             what was sampled: questions (a fingerprint of their prompts and answers), num_samples,
                            do_sample, shard_size, seed and the caller's settings (model, temperature, ...)
      shard-00000.jsonl     one line per sample of questions [0, shard_size), graded
      shard-00001.jsonl     ...

A shard is written to ``shard-NNNNN.jsonl.tmp`` and renamed when complete, so an interrupted run leaves no partial
shard under the final name; a rerun skips every complete shard and redoes the rest (a final-named file that is
truncated, unreadable or has other questions is redone too). Resuming with other settings is refused with the
differing keys named: mixing samples of two models or temperatures would silently corrupt every @k number.
Shard ``i`` is sampled with seed ``seed + i``, so a resumed run samples what an uninterrupted one would have.
With several processes (``accelerate launch``), process ``rank`` samples shards ``rank, rank + world_size, ...``.

Each line is a *sample record* (:mod:`reft_trl.evaluation.records`): one completion, graded as the reward grades it.
:func:`sample_checkpoint` does all of it for a checkpoint and the recipes' :class:`~reft_trl.evaluation.args.SamplingArguments`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from reft_trl.evaluation.records import grade_samples
from reft_trl.evaluation.samplers import Sampler, lazy_checkpoint_sampler

if TYPE_CHECKING:
    from reft_trl.evaluation.args import SamplingArguments

__all__ = ["read_samples", "sample_checkpoint", "sample_to_shards", "shard_path"]

META_FILE = "meta.json"
META_VERSION = 1


def shard_path(output_dir: str | os.PathLike, index: int) -> Path:
    return Path(output_dir) / f"shard-{index:05d}.jsonl"


def _fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["prompt"], row["answer"], row.get("item_id")], default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def _check_meta(output_dir: Path, meta: dict[str, Any], *, write: bool) -> None:
    meta = json.loads(json.dumps(meta, default=str))  # compare what a reload gives (tuples -> lists, ...)
    path = output_dir / META_FILE
    if path.exists():
        old = json.loads(path.read_text())
        differ = {k: (old.get(k), meta.get(k)) for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k)}
        if differ:
            details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"{output_dir} holds samples taken with other settings ({details}). Use another output directory, "
                f"or delete it to start over."
            )
    elif write:
        output_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path)


def _load_shard(
    path: Path, first: int, last: int, num_samples: int, item_ids: Sequence[Any] | None = None
) -> list[dict[str, Any]] | None:
    """The records of a complete shard file, else ``None``. Complete: it parses and holds exactly every (question,
    sample) pair of questions ``first .. last - 1``, once each (and, given ``item_ids``, each question's item id)."""
    if not path.exists():
        return None
    expected = {(q, s) for q in range(first, last) for s in range(num_samples)}
    records, seen = [], set()
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                key = (record["question_index"], record["sample_index"])
                if key not in expected or key in seen:
                    return None
                if item_ids is not None and record.get("item_id") != item_ids[key[0] - first]:
                    return None
                seen.add(key)
                records.append(record)
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return records if seen == expected else None


def _write_shard(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sample_to_shards(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    sampler: Sampler | Callable[..., list[list[str]]],
    *,
    num_samples: int,
    do_sample: bool = True,
    shard_size: int = 64,
    seed: int = 0,
    settings: Mapping[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    desc: str = "sampling",
) -> dict[str, int]:
    """Sample ``num_samples`` completions for every row into graded JSONL shards, skipping shards already complete.

    Args:
        rows: prompt-only rows (``prompt``, ``answer``, ``answer_format``, ``cot``, ``completion_prefix``,
            ``item_id``), as ``reft_trl.data`` loaders make with ``kind="rl"``. Row ``i`` is question ``i``.
        output_dir: the shard folder (created).
        sampler: ``sampler(prompts, num_samples=, do_sample=, seed=) -> list[list[str]]``, e.g. from
            :func:`build_sampler`.
        num_samples: completions per question; ``do_sample=False`` (greedy) needs ``num_samples=1``.
        shard_size: questions per shard (the unit of resumption).
        seed: shard ``i`` is sampled with seed ``seed + i``.
        settings: what else determines the samples (model, temperature, top_k, top_p, max_new_tokens, ...); stored in
            ``meta.json``, and a resume with different settings raises ``ValueError``.
        rank, world_size: this process samples shards ``rank, rank + world_size, ...``; the caller waits for all
            processes before reading (:func:`read_samples`).

    Returns:
        ``{"shards": total shards, "skipped": complete shards found, "sampled": shards sampled now}`` (this process).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("sample_to_shards got no rows to sample.")
    missing = [c for c in ("prompt", "answer") if c not in rows[0]]
    if missing:
        raise ValueError(f"Rows need the columns {missing} (prompt-only rows: load the data with kind='rl').")
    if num_samples < 1 or shard_size < 1:
        raise ValueError(f"num_samples ({num_samples}) and shard_size ({shard_size}) must be >= 1.")
    if not do_sample and num_samples != 1:
        raise ValueError("Greedy decoding (do_sample=False) gives one completion per question: use num_samples=1.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is not in 0..world_size-1 (world_size={world_size}).")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": META_VERSION,
        "n_questions": len(rows),
        "fingerprint": _fingerprint(rows),
        "num_samples": num_samples,
        "do_sample": do_sample,
        "shard_size": shard_size,
        "seed": seed,
        **dict(settings or {}),
    }
    _check_meta(out, meta, write=rank == 0)

    n_shards = math.ceil(len(rows) / shard_size)
    mine = list(range(rank, n_shards, world_size))
    todo, done_questions = [], 0
    for i in mine:
        first, shard_rows = i * shard_size, rows[i * shard_size : (i + 1) * shard_size]
        item_ids = [row.get("item_id") for row in shard_rows]
        if _load_shard(shard_path(out, i), first, first + len(shard_rows), num_samples, item_ids) is not None:
            done_questions += len(shard_rows)
        else:
            todo.append(i)
    total = sum(len(rows[i * shard_size : (i + 1) * shard_size]) for i in mine)
    with tqdm(total=total, initial=done_questions, desc=desc, unit="question", disable=not progress) as bar:
        for i in todo:
            first = i * shard_size
            shard_rows = rows[first : first + shard_size]
            completions = sampler(
                [row["prompt"] for row in shard_rows], num_samples=num_samples, do_sample=do_sample, seed=seed + i
            )
            if len(completions) != len(shard_rows) or any(len(c) != num_samples for c in completions):
                raise ValueError(
                    f"The sampler returned {[len(c) for c in completions]} completions for {len(shard_rows)} prompts; "
                    f"expected {num_samples} per prompt."
                )
            _write_shard(shard_path(out, i), grade_samples(shard_rows, completions, first_index=first))
            bar.update(len(shard_rows))
    return {"shards": n_shards, "skipped": len(mine) - len(todo), "sampled": len(todo)}


def read_samples(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every sample record of a finished :func:`sample_to_shards` run, in (question, sample) order.

    Raises ``FileNotFoundError`` without ``meta.json`` and ``ValueError`` naming the shards that are missing or
    incomplete (rerun the sampling to finish them).
    """
    out = Path(output_dir)
    if not (out / META_FILE).exists():
        raise FileNotFoundError(f"{out / META_FILE} not found: {out} is not a sample folder of sample_to_shards().")
    meta = json.loads((out / META_FILE).read_text())
    n, size, k = meta["n_questions"], meta["shard_size"], meta["num_samples"]
    records, incomplete = [], []
    for i in range(math.ceil(n / size)):
        shard = _load_shard(shard_path(out, i), i * size, min(n, (i + 1) * size), k)
        if shard is None:
            incomplete.append(shard_path(out, i).name)
        else:
            records.extend(shard)
    if incomplete:
        shown = ", ".join(incomplete[:5]) + (f" and {len(incomplete) - 5} more" if len(incomplete) > 5 else "")
        raise ValueError(f"{out}: shards missing or incomplete: {shown}. Run the sampling again to finish them.")
    records.sort(key=lambda r: (r["question_index"], r["sample_index"]))
    return records


def sample_checkpoint(
    model_name_or_path: str,
    rows: Sequence[Mapping[str, Any]],
    args: SamplingArguments,
    output_dir: str | os.PathLike,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample ``args.num_samples`` completions per row from a checkpoint into resumable shards; return all records.

    Runs under ``accelerate launch`` too: each process samples its shards on its own device (transformers backend)
    and all wait for each other before the records are read. The model is only loaded if a shard is missing.
    """
    from accelerate import PartialState

    state = PartialState()
    sampler = lazy_checkpoint_sampler(
        model_name_or_path, args, state, model_kwargs=model_kwargs, tokenizer_kwargs=tokenizer_kwargs
    )
    try:
        sample_to_shards(
            rows,
            output_dir,
            sampler,
            num_samples=args.num_samples,
            shard_size=args.shard_size,
            seed=args.sampling_seed,
            settings=args.settings(model_name_or_path),
            rank=state.process_index,
            world_size=state.num_processes,
            progress=progress and state.is_main_process,
        )
    finally:
        sampler.close()
    state.wait_for_everyone()
    return read_samples(output_dir)
