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

Each line is a *sample record*::

    {"question_index": 12, "item_id": "gsm8k_12", "sample_index": 3, "completion": "...",
     "answer": 18.0, "status": "correct", "correct": true}

``completion`` is exactly the generated text (for P-CoT the program body after the header that ended the prompt);
``answer`` is the extracted answer (``null`` if nothing could be extracted) as graded by
:func:`reft_trl.rewards.grade_rows`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from tqdm.auto import tqdm

from reft_trl.evaluation.generation import Prompt, generate_completions, render_prompts, vllm_available
from reft_trl.rewards import grade_rows

__all__ = [
    "BACKENDS",
    "LazySampler",
    "Sampler",
    "SamplingArguments",
    "TransformersSampler",
    "VLLMSampler",
    "build_sampler",
    "dedup_key",
    "grade_samples",
    "group_by_question",
    "read_samples",
    "load_sampling_tokenizer",
    "resolve_backend",
    "sample_checkpoint",
    "sample_to_shards",
    "shard_path",
]

BACKENDS = ("auto", "vllm", "transformers")
META_FILE = "meta.json"
META_VERSION = 1


class Sampler(Protocol):
    """What :func:`sample_to_shards` calls: ``num_samples`` completions for each prompt, in the prompts' order."""

    def __call__(self, prompts: list[Prompt], *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]: ...


# ----------------------------------------------------------------------------------------------------------- samplers


class TransformersSampler:
    """A :class:`Sampler` on a loaded model with transformers ``generate`` (batched, left-padded); see
    :func:`reft_trl.evaluation.generate_completions`. ``batch_size`` counts prompts (each gives ``num_samples``
    sequences)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 700,
        batch_size: int = 8,
        progress: bool = False,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        return generate_completions(
            self.model,
            self.tokenizer,
            prompts,
            num_samples=num_samples,
            do_sample=do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            seed=seed,
            progress=self.progress,
            desc="generating",
        )

    def close(self) -> None:
        """Drop the model and give its accelerator memory back (before training or loading another model)."""
        self.model = None
        _free_memory()


class VLLMSampler:
    """A :class:`Sampler` on a vLLM engine, created on first use and reused for every shard.

    ``top_k=0`` means no top-k filtering (vLLM spells it ``-1``); greedy calls use temperature 0.
    """

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        max_new_tokens: int = 700,
        gpu_memory_utilization: float = 0.9,
        **llm_kwargs: Any,
    ) -> None:
        if not vllm_available():
            raise ImportError(
                "backend='vllm' needs vLLM: pip install 'reft-trl[vllm]' (or use backend='transformers')."
            )
        self.model_name_or_path, self.tokenizer = model_name_or_path, tokenizer
        self.temperature, self.top_k, self.top_p, self.max_new_tokens = temperature, top_k, top_p, max_new_tokens
        self.llm_kwargs = {"gpu_memory_utilization": gpu_memory_utilization, **llm_kwargs}
        self._llm = None

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        from vllm import LLM, SamplingParams

        if self._llm is None:
            self._llm = LLM(model=self.model_name_or_path, seed=seed, **self.llm_kwargs)
        params = SamplingParams(
            n=num_samples,
            temperature=self.temperature if do_sample else 0.0,
            top_k=self.top_k if (do_sample and self.top_k > 0) else -1,
            top_p=self.top_p if do_sample else 1.0,
            max_tokens=self.max_new_tokens,
            seed=seed,
        )
        outputs = self._llm.generate(render_prompts(self.tokenizer, prompts), params, use_tqdm=False)
        return [[choice.text for choice in out.outputs] for out in outputs]

    def close(self) -> None:
        self._llm = None
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"vllm"`` when vLLM is installed and a GPU is visible, else ``"transformers"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {BACKENDS}.")
    if backend == "auto":
        import torch

        return "vllm" if vllm_available() and torch.cuda.is_available() else "transformers"
    if backend == "vllm" and not vllm_available():
        raise ImportError("backend='vllm' needs vLLM: pip install 'reft-trl[vllm]' (or use backend='transformers').")
    return backend


def build_sampler(
    model_name_or_path: str,
    tokenizer,
    *,
    backend: str = "auto",
    batch_size: int = 8,
    device: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    vllm_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    **params: Any,
):
    """A :class:`Sampler` for the checkpoint ``model_name_or_path``: vLLM or transformers (see :func:`resolve_backend`).

    ``params`` (``temperature``, ``top_k``, ``top_p``, ``max_new_tokens``) go to the sampler, ``model_kwargs`` to
    ``from_pretrained`` (``dtype``, ``revision``, ...; via :func:`reft_trl.models.load_causal_lm`, so a ReFT
    checkpoint's value head is not reported as unexpected), ``vllm_kwargs`` to ``vllm.LLM``;
    ``device`` defaults to CUDA when available. ``batch_size`` and ``progress`` are the transformers sampler's.
    """
    if resolve_backend(backend) == "vllm":
        return VLLMSampler(model_name_or_path, tokenizer, **params, **dict(vllm_kwargs or {}))
    import torch

    from reft_trl.models.value_model import load_causal_lm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(model_name_or_path, **dict(model_kwargs or {})).to(device)
    return TransformersSampler(model, tokenizer, batch_size=batch_size, progress=progress, **params)


class LazySampler:
    """A :class:`Sampler` built by ``factory()`` on its first call: a resumed run whose shards are all complete
    never loads the model."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.sampler = None

    def __call__(self, prompts, *, num_samples: int, do_sample: bool, seed: int) -> list[list[str]]:
        if self.sampler is None:
            self.sampler = self.factory()
        return self.sampler(prompts, num_samples=num_samples, do_sample=do_sample, seed=seed)

    def close(self) -> None:
        if self.sampler is not None and hasattr(self.sampler, "close"):
            self.sampler.close()
        self.sampler = None


def load_sampling_tokenizer(model_name_or_path: str, **kwargs: Any):
    """The checkpoint's tokenizer, ready for batched generation: a pad token (EOS if none) and left padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def lazy_checkpoint_sampler(
    model_name_or_path: str,
    args: SamplingArguments,
    state,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
) -> LazySampler:
    """This process's sampler for a checkpoint with ``args``' settings (``state``: accelerate's ``PartialState``),
    built on first use.

    The tokenizer is loaded now; the model only when a shard needs sampling. vLLM is refused under several
    processes. ``model_kwargs`` go to :func:`build_sampler` (``device`` is the process's device).
    """
    backend = resolve_backend(args.backend)
    if backend == "vllm" and state.num_processes > 1:
        raise ValueError(
            "vLLM sampling runs in a single process: start the recipe with `python` (or use --backend transformers)."
        )
    tokenizer = load_sampling_tokenizer(model_name_or_path, **dict(tokenizer_kwargs or {}))
    params = {k: v for k, v in args.settings(model_name_or_path).items() if k != "model"}  # temperature, ...
    return LazySampler(
        lambda: build_sampler(
            model_name_or_path,
            tokenizer,
            backend=backend,
            **params,
            batch_size=args.sampling_batch_size,
            device=str(state.device),
            model_kwargs=model_kwargs,
            vllm_kwargs={"gpu_memory_utilization": args.vllm_gpu_memory_utilization},
        )
    )


# ------------------------------------------------------------------------------------------------------------ records


def _jsonable(answer: Any) -> Any:
    if answer is None or isinstance(answer, (bool, int, str)):
        return answer
    if isinstance(answer, float):
        return answer if math.isfinite(answer) else str(answer)
    return str(answer)


def grade_samples(
    rows: Sequence[Mapping[str, Any]], completions: Sequence[Sequence[str]], *, first_index: int = 0
) -> list[dict[str, Any]]:
    """Sample records (see the module docstring) of ``completions[i]`` for ``rows[i]``, question indices counted from
    ``first_index``. All completions are graded in one :func:`~reft_trl.rewards.grade_rows` call (P-CoT
    programs run in parallel in the sandbox)."""
    if len(completions) != len(rows):
        raise ValueError(f"Got completions for {len(completions)} prompts but there are {len(rows)} rows.")
    flat_rows, flat_texts, where = [], [], []
    for i, (row, texts) in enumerate(zip(rows, completions)):
        for s, text in enumerate(texts):
            flat_rows.append(row)
            flat_texts.append(text)
            where.append((i, s))
    outcomes = grade_rows(flat_rows, flat_texts)
    return [
        {
            "question_index": first_index + i,
            "item_id": rows[i].get("item_id"),
            "sample_index": s,
            "completion": text,
            "answer": _jsonable(outcome.answer),
            "status": outcome.status,
            "correct": outcome.status == "correct",
        }
        for (i, s), text, outcome in zip(where, flat_texts, outcomes)
    ]


def dedup_key(completion: str) -> str:
    """Two completions of one question are duplicates when they are equal up to surrounding whitespace."""
    return completion.strip()


def group_by_question(records: Iterable[Mapping[str, Any]], n_questions: int | None = None) -> list[list[dict]]:
    """Records grouped per ``question_index`` (``0 .. n_questions - 1``), each group in ``sample_index`` order."""
    records = list(records)
    n = n_questions if n_questions is not None else 1 + max((r["question_index"] for r in records), default=-1)
    groups: list[list[dict]] = [[] for _ in range(n)]
    for record in records:
        q = record["question_index"]
        if not 0 <= q < n:
            raise ValueError(f"A sample record has question_index {q}, outside 0..{n - 1}.")
        groups[q].append(dict(record))
    for group in groups:
        group.sort(key=lambda r: r["sample_index"])
    return groups


# ------------------------------------------------------------------------------------------------------------- shards


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


# ----------------------------------------------------------------------------------------------------------- recipes


@dataclass
class SamplingArguments:
    """How the recipes sample k completions per question (paper: 100 samples at T=1.0): the self-training and ORM
    recipes on the training questions, ``recipes/evaluate.py`` (its ``EvaluateArguments`` extend these) on the test
    questions."""

    min_num_samples: ClassVar[int] = 1

    num_samples: int = field(default=100, metadata={"help": "Completions sampled per question (the paper's k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_k: int = field(default=0, metadata={"help": "Top-k filtering (0: none, as the paper)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (1.0: none, as the paper)."})
    max_new_tokens: int = field(default=700, metadata={"help": "Generation budget per completion."})
    sampling_batch_size: int = field(
        default=8, metadata={"help": "Prompts per generate() call (transformers backend); each gives num_samples."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Shard i is sampled with seed sampling_seed + i."})
    backend: str = field(
        default="auto", metadata={"help": "'vllm', 'transformers', or 'auto' (vLLM when installed and on GPU)."}
    )
    shard_size: int = field(default=64, metadata={"help": "Questions per shard file (the unit of resumption)."})
    samples_dir: str | None = field(
        default=None, metadata={"help": "Shard folder (default: OUTPUT_DIR/samples); a rerun resumes it."}
    )
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM's share of GPU memory."})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: expected one of {BACKENDS}.")
        if self.num_samples < self.min_num_samples:
            raise ValueError(f"num_samples must be >= {self.min_num_samples}, got {self.num_samples}.")

    def settings(self, model_name_or_path: str) -> dict[str, Any]:
        """What, besides the questions, determines the samples (recorded in the shard folder's meta.json)."""
        return {
            "model": str(model_name_or_path),
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }


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
