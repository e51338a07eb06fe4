"""Loaders for GSM8K, SVAMP, MathQA, MathQA-numeric, MATH and the embedded synthetic task, returning ``datasets.Dataset``.

Every source is first normalised to the ReFT authors' raw schema ``{item_id, question, answer_cot, answer_value}``
(GSM8K's native ``question, answer`` and MATH's ``problem, solution`` included), validated, then formatted by the same code into one of two row
shapes in TRL's standard formats:

* ``kind="sft"`` -- prompt-completion rows for ``SFTTrainer``: ``prompt``, ``completion`` (N-CoT or P-CoT target,
  no EOS: TRL appends it), ``item_id``, ``answer``, ``answer_format``, ``cot``, ``question``.
* ``kind="rl"`` -- prompt-only rows for ReFT/GRPO and evaluation: ``prompt``, ``completion_prefix``, ``answer``
  (the gold as the answer format writes it), ``answer_format`` (``"numeric"``, ``"multiple_choice"`` or any
  registered format's name), ``cot`` (``"nl"`` | ``"python"``), ``item_id``, ``question``.

Extra fields of the source (e.g. the synthetic task's ``ops``/``n_steps``) are carried through unchanged, including a
field only some rows have (``None`` in the others); a source field named like one of the columns above is replaced
by the loader's and reported (logged and in :class:`LoadStats` ``messages``).
``chat=True`` renders prompts (and SFT completions) as conversational messages; see :mod:`reft_trl.data.formats`.

Validation. Errors (:class:`DataValidationError`) name the dataset, the row id, the field and the value: a missing
or empty question or answer value, a gold that the row's answer format cannot parse (the reward's own
``parse_gold``: a number for ``numeric``, where ambiguous spellings such as ``1,5`` are refused as the reward refuses
them, one option letter for ``multiple_choice``, whatever a registered format accepts), a duplicate ``item_id``, a
missing ``answer_cot`` when an SFT target is requested (test sets have none), a P-CoT annotation that is not a
``def solution():`` program or an N-CoT annotation that is one. With ``on_invalid="skip"`` such rows are dropped
instead, and counted. Suspicious but usable rows are kept and counted as *flagged*: an N-CoT annotation that states
an answer the reward would not score correct for ``answer_value`` (``stated_answer_mismatch``: the stated answer,
e.g. ``<7>`` in ``"Therefore, the answer is <7>."``, read by the answer format as an answer line; svamp_nl.json has
2 such rows, svamp_929 and svamp_2000), an empty N-CoT (``empty_cot``: the target is the answer line alone), a
program whose docstring differs from the question (``header_differs``: the header is rebuilt from the question).

Reading errors name the file and where in it: bytes that are not UTF-8 (a Latin-1 file is refused, not guessed
at), truncated or invalid JSON (line and column), a ``.json`` holding a single object instead of a list, a record
that is not an object (its index). A column whose values Arrow cannot store together (an int in one row and a string
in another) is refused with the first row that does not fit and the field. These are always raised, whatever
``on_invalid`` says.

Nothing is dropped or changed silently: skipped and flagged rows are logged (``logging`` warning with the counts
and the first ids) and recorded in a :class:`LoadStats`, which the loaders return with ``return_stats=True`` and
also store, as JSON, in ``dataset.info.description`` (read it back with :func:`load_stats`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset

from reft_trl.rewards.cot import check_cot, python_header, split_program
from reft_trl.rewards.extractors import ANSWER_TRIGGER, AnswerFormat, get_answer_format
from reft_trl.rewards.math_answers import last_boxed

from .formats import parse_gsm8k_answer, prompt_example, sft_example, stated_answer

logger = logging.getLogger(__name__)

DATASETS: dict[str, str] = {
    "gsm8k": "numeric",
    "svamp": "numeric",
    "mathqa-numeric": "numeric",
    "mathqa": "multiple_choice",
    "synthetic": "numeric",
    "math": "math",
}
"""Known dataset names and their answer format (``"math"``: LaTeX answers, needs ``pip install reft-trl[math]``). Other names need an explicit ``answer_format`` (any format registered
with :func:`reft_trl.rewards.register_answer_format`)."""

COT_FILE_SUFFIXES = {"nl": "_nl", "python": "_python_sdp"}
"""The authors' file layout: ``{dataset}_nl.json``, ``{dataset}_python_sdp.json``, ``{dataset}_{split}_set.json``."""

RAW_FIELDS = ("item_id", "question", "answer_cot", "answer_value")
ROW_KINDS = ("sft", "rl")
ON_INVALID = ("raise", "skip")
_SHOW_IDS = 5


@dataclass(frozen=True)
class LoadOptions:
    """What every loader is asked besides where the data is: the shape of the rows and what to do with invalid ones.

    Every loader (:func:`load_gsm8k`, :func:`load_math`, :func:`load_mwp`, :func:`from_records`,
    :func:`reft_trl.data.load_synthetic`) takes these fields as keyword arguments (``load_gsm8k(..., kind="rl",
    cot="python")``) or as one object (``options=LoadOptions(kind="rl")``; keywords given too replace its fields).

    * ``kind``: ``"sft"`` (prompt-completion rows) or ``"rl"`` (prompt-only rows for RL and evaluation).
    * ``cot``: ``"nl"`` (N-CoT) or ``"python"`` (P-CoT); ``None`` (the default): the data's own where a loader can
      tell (:func:`load_mwp`: the file name, then the annotations), else ``"nl"``.
    * ``chat``: render prompts (and SFT completions) as conversational messages.
    * ``on_invalid``: ``"raise"`` a :class:`DataValidationError` on an invalid row, or ``"skip"`` (drop and count) it.
    * ``return_stats``: return ``(dataset, LoadStats)`` instead of the dataset.
    """

    kind: Literal["sft", "rl"] = "sft"
    cot: Literal["nl", "python"] | None = None
    chat: bool = False
    on_invalid: Literal["raise", "skip"] = "raise"
    return_stats: bool = False

    def __post_init__(self):
        if self.kind not in ROW_KINDS:
            raise ValueError(f"kind must be one of {ROW_KINDS}, got {self.kind!r}")
        if self.cot is not None:
            check_cot(self.cot)
        if self.on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be 'raise' or 'skip', got {self.on_invalid!r}")

    @classmethod
    def of(cls, loader: str, options: LoadOptions | None = None, **keywords: Any) -> LoadOptions:
        """``options`` (default: the defaults) with ``keywords`` (a loader's keyword arguments) replacing fields; an
        unknown keyword is a ``TypeError`` naming the ``loader`` and the options it takes."""
        if options is not None and not isinstance(options, LoadOptions):
            raise TypeError(f"{loader}(): options must be a reft_trl.data.LoadOptions, got {type(options).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = [k for k in keywords if k not in names]
        if unknown:
            raise TypeError(
                f"{loader}() got an unexpected keyword argument {unknown[0]!r} (its options, "
                f"reft_trl.data.LoadOptions: {', '.join(names)})"
            )
        return replace(options or cls(), **keywords)


class DataValidationError(ValueError):
    """A row failed validation. The message names the dataset, the row id, the field and the value."""

    def __init__(
        self, dataset: str, source: str, item_id: str, field: str, value: Any, problem: str, detail: str = ""
    ):
        self.dataset = dataset
        self.source = source
        self.item_id = item_id
        self.field = field
        self.value = value
        self.problem = problem  # the reason rows are grouped by in LoadStats: never holds the value
        message = f"{dataset} ({source}), row {item_id}, field {field!r}: {problem} (value: {_short(value)!r})"
        super().__init__(f"{message}: {detail}" if detail else message)


def _short(value: Any) -> Any:
    return value[:77] + "..." if isinstance(value, str) and len(value) > 80 else value


@dataclass
class LoadStats:
    """What a loader read, kept, dropped and flagged.

    ``skipped`` and ``flagged`` map a reason to the item ids concerned; ``messages`` holds one line per issue
    (dataset, row id, field, value).
    """

    dataset: str
    source: str
    split: str | None
    cot: str
    kind: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    flagged: dict[str, list[str]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LoadStats:
        return cls(**json.loads(text))


def load_stats(dataset: Dataset) -> LoadStats:
    """The :class:`LoadStats` a loader stored in ``dataset.info.description``."""
    try:
        return LoadStats.from_json(dataset.info.description or "")
    except (ValueError, TypeError) as err:
        raise ValueError("this dataset carries no reft_trl load stats in dataset.info.description") from err


# --------------------------------------------------------------------------------------------------------------------
# Public loaders


def load_gsm8k(
    path_or_id: str | os.PathLike = "openai/gsm8k",
    split: str = "train",
    *,
    name: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
) -> Dataset | tuple[Dataset, LoadStats]:
    """GSM8K in OpenAI's native format (``question``, ``answer`` ending in ``#### <value>``).

    ``path_or_id``: a hub dataset id (default ``openai/gsm8k``, loaded as ``load_dataset(id, name, split=split)``
    with ``name="main"`` unless given), a local dataset directory (same call: e.g. a copy of the hub repository,
    or a folder with ``train.jsonl``/``test.jsonl``), or a local ``.jsonl``/``.json`` file (read directly; ``split``
    only names it). Item ids are ``gsm8k_<row index>``, which matches the ReFT authors' ``gsm8k_test_set.json``.

    The N-CoT target keeps the ``<<48/2=24>>`` calculator annotations and replaces the ``#### 72`` line by
    ``Therefore, the answer is: 72``; gold values lose thousands commas. GSM8K has no programs: ``cot="python"``
    is only available for ``kind="rl"`` (use :func:`load_mwp` on the authors' ``gsm8k_python_sdp.json`` for P-CoT SFT).
    ``kind``, ``cot`` (default ``"nl"``), ``chat``, ``on_invalid``, ``return_stats``: :class:`LoadOptions`.
    """
    options = LoadOptions.of("load_gsm8k", options, **keywords)
    if options.kind == "sft" and options.cot == "python":
        raise ValueError(
            "gsm8k: native GSM8K has no P-CoT programs; use load_mwp on the authors' gsm8k_python_sdp.json for P-CoT SFT"
        )
    if name is None and str(path_or_id) == "openai/gsm8k":
        name = "main"
    rows, source = _read_source(path_or_id, split=split, name=name, load_dataset_kwargs=load_dataset_kwargs)
    raw, errors = [], {}
    for i, row in enumerate(rows):
        item_id = f"gsm8k_{i}"
        answer = row.get("answer")
        extra = {k: v for k, v in row.items() if k not in ("question", "answer")}
        raw.append(
            {**extra, "item_id": item_id, "question": row.get("question"), "answer_cot": None, "answer_value": None}
        )
        if not isinstance(answer, str) or not answer.strip():
            errors[i] = DataValidationError("gsm8k", source, item_id, "answer", answer, "missing or empty answer")
            continue
        try:
            raw[-1]["answer_cot"], raw[-1]["answer_value"] = parse_gsm8k_answer(answer)
        except ValueError as err:
            errors[i] = DataValidationError("gsm8k", source, item_id, "answer", answer[-60:], str(err))
    return _build(
        raw, options, dataset="gsm8k", source=source, split=split, answer_format="numeric", row_errors=errors
    )


MATH_HUB_ID = "DigitalLearningGmbH/MATH-lighteval"
"""The default hub copy of MATH (Hendrycks et al.; the original ``hendrycks/competition_math`` was taken down):
``problem, level, type, solution``, splits ``train`` (7,500) and ``test`` (5,000)."""


def load_math(
    path_or_id: str | os.PathLike = MATH_HUB_ID,
    split: str = "train",
    *,
    name: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
) -> Dataset | tuple[Dataset, LoadStats]:
    r"""MATH-style rows (``problem``, ``solution`` with a ``\boxed{}`` answer; optional ``answer``, ``level``,
    ``type``/``subject``, ``unique_id``), graded with the ``"math"`` answer format (``pip install reft-trl[math]``).

    ``path_or_id``: a hub dataset id (default :data:`MATH_HUB_ID`, read as ``load_dataset(id, name, split=split)``,
    e.g. ``HuggingFaceH4/MATH-500`` with ``split="test"``); a local ``.jsonl``/``.json`` file (``split`` only names
    it); or a local folder holding ``{split}.jsonl``/``{split}.json``, or the original release's ``{split}/<subject>/
    <n>.json`` files (one problem each), or anything else ``load_dataset(folder, split=split)`` reads.

    The gold is the row's ``answer`` when it has one (MATH-500), else the last ``\boxed{}`` of its ``solution``,
    extracted and validated by the answer format itself (``gold_text``, ``parse_gold``); a row with neither is a
    :class:`DataValidationError` naming the file, the row, the ``solution`` field and its end. Item ids: the row's
    ``item_id`` or ``unique_id``, else ``math_<row index>`` (the original layout: ``<subject>/<n>``).

    The N-CoT SFT target is the solution **as written** (it ends in, or contains, the boxed answer, which the reward
    reads), without the ``Therefore, the answer is:`` line the other datasets' targets end with; a solution whose
    boxed answer the reward would not score correct against the gold (e.g. an ``answer`` field that disagrees) is
    kept and flagged ``stated_answer_mismatch``. MATH has no programs: ``cot="python"`` is only available for
    ``kind="rl"`` (the program's returned value is read by the format's ``from_program``).
    ``kind``, ``cot`` (default ``"nl"``), ``chat``, ``on_invalid``, ``return_stats``: :class:`LoadOptions`.
    """
    options = LoadOptions.of("load_math", options, **keywords)
    if options.kind == "sft" and options.cot == "python":
        raise ValueError(
            "math: MATH has no P-CoT programs, so there is no P-CoT SFT target; use cot='nl' or kind='rl'"
        )
    fmt = get_answer_format(DATASETS["math"])
    rows, source = _read_math_source(path_or_id, split, name, load_dataset_kwargs)
    raw, errors = [], {}
    for i, row in enumerate(rows):
        item_id = str(row.get("item_id") or row.get("unique_id") or row.get("_path") or f"math_{i}")
        solution, answer = row.get("solution"), row.get("answer")
        extra = {k: v for k, v in row.items() if k not in ("item_id", "problem", "solution", "answer", "_path")}
        raw.append(
            {**extra, "item_id": item_id, "question": row.get("problem"), "answer_cot": solution, "answer_value": None}
        )
        if answer is not None and str(answer).strip():
            field_name, gold = "answer", answer
        elif isinstance(solution, str) and last_boxed(solution) is not None:
            field_name, gold = "solution", solution
        else:
            value = solution[-60:] if isinstance(solution, str) else solution
            errors[i] = DataValidationError(
                "math", source, item_id, "solution", value, "no \\boxed{} answer in the solution and no 'answer' field"
            )
            continue
        text = None
        try:  # the format's own extraction (a solution's last \boxed{}) and validation, so errors name the field
            text = fmt.gold_text(gold)
            fmt.parse_gold(text)
        except ValueError as err:
            value = gold if text is None else text
            problem = "not a gold answer of the 'math' answer format"
            errors[i] = DataValidationError("math", source, item_id, field_name, value, problem, str(err))
            continue
        raw[-1]["answer_value"] = text
    return _build(
        raw,
        options,
        dataset="math",
        source=source,
        split=split,
        answer_format=fmt.name,
        row_errors=errors,
        answer_line=False,
    )


def _read_math_source(
    path_or_id: str | os.PathLike, split: str, name: str | None, load_dataset_kwargs: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """MATH rows from a file, a folder (``{split}.jsonl``/``.json``, or ``{split}/<subject>/<n>.json``) or the hub."""
    path = Path(path_or_id)
    if path.is_dir():
        for candidate in (path / f"{split}.jsonl", path / f"{split}.json"):
            if candidate.is_file():
                return _read_json_file(candidate), f"{path.name}/{candidate.name}"
        per_problem = sorted((path / split).rglob("*.json")) if (path / split).is_dir() else []
        if per_problem:
            rows = []
            for file in per_problem:
                [row] = _read_json_file(file) if file.read_bytes().lstrip()[:1] == b"[" else [_read_object(file)]
                rows.append({**row, "_path": file.relative_to(path / split).with_suffix("").as_posix()})
            return rows, f"{path.name}/{split}/"
    if name is None and str(path_or_id) == MATH_HUB_ID:
        name = "default"
    return _read_source(path_or_id, split=split, name=name, load_dataset_kwargs=load_dataset_kwargs)


def _read_object(path: Path) -> dict[str, Any]:
    """One JSON object (a per-problem file of the original MATH release), with the file named in any error."""
    try:
        row = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataValidationError(
            path.stem, path.name, "<file>", "<file>", str(path), f"not UTF-8 JSON ({err})"
        ) from None
    if not isinstance(row, dict):
        raise DataValidationError(path.stem, path.name, "<file>", "<file>", row, "expected a JSON object")
    return row


def load_mwp(
    name_or_path: str | os.PathLike,
    *,
    dataset: str | None = None,
    split: str | None = None,
    answer_format: str | None = None,
    load_dataset_kwargs: dict[str, Any] | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
) -> Dataset | tuple[Dataset, LoadStats]:
    """A dataset in the ReFT authors' JSON format (``item_id, question, answer_cot, answer_value``).

    ``name_or_path`` is one of:

    * a local ``.json`` (a list of objects) or ``.jsonl`` file, e.g. ``svamp_python_sdp.json``; ``dataset`` and
      ``cot`` (and ``split``, which then only names it) default to what its name says (``{dataset}_nl``,
      ``{dataset}_python_sdp``, ``{dataset}_{split}_set``);
    * a local directory in the authors' layout, e.g. ``.../mwp_reft`` or one written by
      :func:`reft_trl.data.synthetic.write_task`: with ``dataset`` given, ``split="train"`` reads
      ``{dataset}_nl.json`` or ``{dataset}_python_sdp.json`` (by ``cot``), any other split ``{dataset}_{split}_set.json``;
    * otherwise a hub dataset id or a local dataset directory, read with ``load_dataset(name_or_path, split=split)``
      (``split`` defaults to ``"train"``)
      (``dataset`` defaults to the id's last component when that is a known name).

    ``dataset`` (svamp, gsm8k, mathqa, mathqa-numeric, synthetic) decides the answer format: ``"multiple_choice"``
    for mathqa (gold a letter a-e, options in the question), ``"numeric"`` for the others; pass ``answer_format``
    for other names. ``cot`` defaults to the file name's, then to the annotations' (programs start with
    ``def solution():``), then to ``"nl"``; test sets have no ``answer_cot`` and only support ``kind="rl"``.
    ``kind``, ``cot``, ``chat``, ``on_invalid``, ``return_stats``: :class:`LoadOptions`.
    """
    options = LoadOptions.of("load_mwp", options, **keywords)
    cot = options.cot
    path = Path(name_or_path)
    if split is None:  # a file's name may say it: {dataset}_{split}_set.json
        match = re.fullmatch(r".+?_(\w+)_set", path.stem) if path.is_file() else None
        split = match.group(1) if match else "train"
    if path.is_dir() and dataset is not None and sorted(path.glob(f"{dataset}_*.json")):
        found = _authors_file(path, dataset, split, cot or "nl")
        if found is None:
            available = ", ".join(p.name for p in sorted(path.glob(f"{dataset}_*.json")))
            raise FileNotFoundError(
                f"{dataset}: no file for split={split!r}, cot={cot or 'nl'!r} in {path} (authors' layout: "
                f"{dataset}_nl.json, {dataset}_python_sdp.json, {dataset}_<split>_set.json); found: {available}"
            )
        path = found
    if path.is_file():
        dataset = dataset or _dataset_from_name(path.stem)
        cot = cot or _cot_from_name(path.stem)
    elif dataset is None:
        dataset = _dataset_from_name(str(name_or_path).rstrip("/").split("/")[-1])
    if dataset is None:
        raise ValueError(
            f"{name_or_path}: cannot tell which dataset this is; pass dataset= (one of {sorted(DATASETS)}, "
            "or any name with answer_format=)"
        )
    answer_format = _answer_format_of(dataset, answer_format)
    rows, source = _read_source(
        path if path.is_file() else name_or_path, split=split, name=None, load_dataset_kwargs=load_dataset_kwargs
    )
    if cot is None:
        first = next((r.get("answer_cot") for r in rows if isinstance(r.get("answer_cot"), str)), None)
        cot = "python" if first is not None and first.lstrip().startswith("def solution():") else "nl"
    options = replace(options, cot=cot)
    return _build(rows, options, dataset=dataset, source=source, split=split, answer_format=answer_format)


def from_records(
    records: Iterable[dict[str, Any]],
    *,
    dataset: str,
    answer_format: str | None = None,
    split: str | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
) -> Dataset | tuple[Dataset, LoadStats]:
    """Format and validate in-memory rows of the raw schema, exactly as the file loaders do.

    ``kind``, ``cot`` (default ``"nl"``), ``chat``, ``on_invalid``, ``return_stats``: :class:`LoadOptions`."""
    options = LoadOptions.of("from_records", options, **keywords)
    answer_format = _answer_format_of(dataset, answer_format)
    return _build(
        list(records), options, dataset=dataset, source="<records>", split=split, answer_format=answer_format
    )


def _answer_format_of(dataset: str, answer_format: str | None) -> str:
    """The registered answer format's name for ``dataset`` (``answer_format`` if given, else the known dataset's)."""
    name = answer_format or DATASETS.get(dataset)
    if name is None:
        raise ValueError(
            f"{dataset}: unknown dataset name; pass answer_format= (a registered answer format, see "
            "reft_trl.rewards.register_answer_format)"
        )
    if not isinstance(name, str):
        raise TypeError(
            f"{dataset}: answer_format must be the name of a registered format (it is stored in the rows' "
            f"answer_format column), got {type(name).__name__}"
        )
    get_answer_format(name)  # raises, listing the registered formats, for an unknown name
    return name


# --------------------------------------------------------------------------------------------------------------------
# Reading


def _read_source(
    path_or_id: str | os.PathLike, *, split: str, name: str | None, load_dataset_kwargs: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """Rows as plain dicts, and a short name of where they came from (used in messages)."""
    path = Path(path_or_id)
    if path.is_file():
        return _read_json_file(path), path.name
    from datasets import load_dataset

    target = str(path.resolve()) if path.is_dir() else str(path_or_id)  # load_dataset needs a named local folder
    args = (target,) if name is None else (target, name)
    ds = load_dataset(*args, split=split, **(load_dataset_kwargs or {}))
    return ds.to_list(), f"{path_or_id}[{split}]"


def _read_json_file(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects or a JSON-lines file, read as is (no type inference: gold strings stay strings).

    Every problem names the file and where in it: bytes that are not UTF-8 (e.g. a Latin-1 file; it is refused, not
    guessed at), truncated or otherwise invalid JSON (line and column), a ``.json`` file holding one object rather
    than a list of them, and a record that is not an object."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise DataValidationError(
            path.stem,
            path.name,
            f"at line {line_no}",
            "<file>",
            data[max(0, err.start - 20) : err.end + 20],
            f"not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})",
            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8); it is not guessed at",
        ) from None
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as err:
            if text.lstrip().startswith("["):  # a JSON list, cut short or broken: say where
                raise DataValidationError(
                    path.stem,
                    path.name,
                    f"at line {err.lineno}",
                    "<file>",
                    text[max(0, err.pos - 40) : err.pos + 40],
                    f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}; truncated file?)",
                ) from None
            whole = None  # not one JSON document: read it as JSON lines below
        if isinstance(whole, dict):
            lists = [k for k, v in whole.items() if isinstance(v, list)]
            raise DataValidationError(
                path.stem,
                path.name,
                "<file>",
                "<file>",
                f"object with keys {sorted(whole)[:8]}",
                "expected a JSON list of objects (one per row) or JSON lines, found a single JSON object",
                f"are the rows under {lists[0]!r}? save that list as the file" if lists else "",
            )
        if whole is not None and not isinstance(whole, list):
            raise DataValidationError(
                path.stem, path.name, "<file>", "<file>", whole, "expected a JSON list of objects (one per row)"
            )
        rows = whole
    else:
        rows = None
    if rows is None:
        rows = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataValidationError(
                        path.stem, path.name, f"at line {line_no}", "<line>", line, f"not valid JSON ({err.msg})"
                    ) from err
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataValidationError(path.stem, path.name, f"at index {i}", "<row>", row, "expected a JSON object")
    return rows


def _authors_file(directory: Path, dataset: str, split: str, cot: str) -> Path | None:
    if split == "train":
        candidates = (
            [f"{dataset}{COT_FILE_SUFFIXES[cot]}.json", f"{dataset}_{cot}.json"] if cot in COT_FILE_SUFFIXES else []
        )
    else:
        candidates = [f"{dataset}_{split}_set.json"]
    return next((directory / c for c in candidates if (directory / c).is_file()), None)


def _dataset_from_name(stem: str) -> str | None:
    for known in sorted(DATASETS, key=len, reverse=True):  # "mathqa-numeric" before "mathqa"
        if stem == known or stem.startswith(known + "_"):
            return known
    return None


def _cot_from_name(stem: str) -> str | None:
    if stem.endswith(("_python_sdp", "_python")):
        return "python"
    if stem.endswith("_nl"):
        return "nl"
    return None


# --------------------------------------------------------------------------------------------------------------------
# Validation and formatting


def _build(
    rows: list[dict[str, Any]],
    options: LoadOptions,
    *,
    dataset: str,
    source: str,
    split: str | None,
    answer_format: str,
    row_errors: dict[int, DataValidationError] | None = None,
    answer_line: bool = True,
) -> Dataset | tuple[Dataset, LoadStats]:
    """Validate and format ``rows`` as ``options`` say. ``answer_line=False`` (MATH): the N-CoT SFT target is the
    annotation as written, which must state its answer in a form the answer format extracts, instead of the annotation
    followed by the ``Therefore, the answer is:`` line."""
    options = replace(options, cot=options.cot or "nl")  # cot=None: the data did not say
    fmt = get_answer_format(answer_format)
    stats = LoadStats(
        dataset=dataset, source=source, split=split, cot=options.cot, kind=options.kind, rows_read=len(rows)
    )
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):  # e.g. from_records([...]) with a list or a string among the records
            raise DataValidationError(
                dataset, source, f"at index {i}", "<row>", row, f"expected a dict, got {type(row).__name__}"
            )
        item_id = str(row.get("item_id") or f"{dataset}_{i}")
        flags: list[DataValidationError] = []
        try:
            if row_errors and i in row_errors:
                raise row_errors[i]
            if item_id in seen:
                raise DataValidationError(dataset, source, item_id, "item_id", item_id, "duplicate item_id")
            formatted = _format_row(row, item_id, flags, dataset, source, options, fmt, answer_line)
        except DataValidationError as err:
            if options.on_invalid == "raise":
                raise
            stats.skipped.setdefault(err.problem, []).append(item_id)
            stats.messages.append(str(err))
            continue
        seen.add(item_id)
        for flag in flags:
            stats.flagged.setdefault(flag.problem, []).append(item_id)
            stats.messages.append(str(flag))
        out.append(formatted)
    stats.rows_kept = len(out)
    replaced = sorted({k for row in rows for k in row if k in _OUTPUT_COLUMNS})
    if replaced:
        stats.messages.append(
            f"{dataset} ({source}): source fields {replaced} were replaced by the loader's columns of the same names"
        )
        logger.warning("%s", stats.messages[-1])
    _report(stats)
    ds = _to_dataset(out, dataset, source) if out else Dataset.from_dict({k: [] for k in _empty_columns(options.kind)})
    ds.info.description = stats.to_json()
    return (ds, stats) if options.return_stats else ds


def _to_dataset(out: list[dict[str, Any]], dataset: str, source: str) -> Dataset:
    """The rows as a ``Dataset``, with every field any row has.

    ``Dataset.from_list`` takes the columns from the first row, which would drop a field that only later rows have:
    here such a field is kept, ``None`` in the rows without it. A column whose values Arrow cannot store together
    (``1`` in one row and ``"a"`` in another, a list and a number, ...) is refused with the first row that does not
    fit, instead of Arrow's error naming neither the row nor the field."""
    import pyarrow as pa

    columns = list(dict.fromkeys(k for row in out for k in row))
    data = {k: [row.get(k) for row in out] for k in columns}
    try:
        return Dataset.from_dict(data)
    except (pa.ArrowException, TypeError, ValueError) as err:
        for name, values in data.items():
            if _arrow_accepts(values):
                continue
            good, bad = 0, len(values)  # the shortest prefix Arrow refuses ends with the first row that does not fit
            while bad - good > 1:
                mid = (good + bad) // 2
                good, bad = (mid, bad) if _arrow_accepts(values[:mid]) else (good, mid)
            first = next(v for v in values if v is not None)
            raise DataValidationError(
                dataset,
                source,
                out[bad - 1]["item_id"],
                name,
                values[bad - 1],
                "mixed types in one column",
                f"this row has a {type(values[bad - 1]).__name__}, earlier rows a {type(first).__name__} "
                f"(e.g. row {out[values.index(first)]['item_id']}: {_short(first)!r}); Arrow cannot store both",
            ) from err
        raise


def _arrow_accepts(values: list[Any]) -> bool:
    import pyarrow as pa

    try:
        Dataset.from_dict({"x": values})
    except (pa.ArrowException, TypeError, ValueError):
        return False
    return True


# Reasons under which kept-but-suspicious rows are counted in LoadStats.flagged.
STATED_ANSWER_MISMATCH = "stated_answer_mismatch"
EMPTY_COT = "empty_cot"
HEADER_DIFFERS = "header_differs"


def _format_row(
    row: dict[str, Any],
    item_id: str,
    flags: list[DataValidationError],
    dataset: str,
    source: str,
    options: LoadOptions,
    fmt: AnswerFormat,
    answer_line: bool = True,
) -> dict[str, Any]:
    """One validated, formatted output row; appends kept-but-suspicious findings to ``flags``.

    The gold is parsed by the answer format (the reward's own ``parse_gold``, so a gold the reward cannot read is
    refused here) and written as ``fmt.gold_text`` gives it."""

    def issue(field_name: str, value: Any, problem: str, detail: str = "") -> DataValidationError:
        return DataValidationError(dataset, source, item_id, field_name, value, problem, detail)

    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise issue("question", question, "missing or empty question")
    question = question.replace("\xa0", " ").strip()  # GSM8K has a few non-breaking spaces; the authors' copy has none
    value = row.get("answer_value")
    if value is None or not str(value).strip():
        raise issue("answer_value", value, "missing or empty answer")
    value = str(value)
    try:
        gold = fmt.parse_gold(value)
    except ValueError as err:
        raise issue("answer_value", value, f"not a gold answer of the {fmt.name!r} answer format", str(err)) from None
    answer = fmt.gold_text(value)
    cot, chat = options.cot, options.chat

    if options.kind == "rl":
        formatted = prompt_example(question, cot, chat=chat)
    else:
        annotation = row.get("answer_cot")
        if annotation is None:
            raise issue(
                "answer_cot",
                annotation,
                "missing: an SFT target needs an annotation (test sets have none; use kind='rl')",
            )
        if not isinstance(annotation, str):
            raise issue("answer_cot", annotation, "expected a string")
        is_program = annotation.lstrip().startswith("def solution():")
        if cot == "python":
            try:
                header, _ = split_program(annotation)
            except ValueError:
                raise issue(
                    "answer_cot",
                    annotation,
                    "expected a P-CoT program starting with 'def solution():' and a docstring",
                ) from None
            if header != python_header(question):
                flags.append(issue("answer_cot", header.split("\n")[1].strip(), HEADER_DIFFERS))
        elif is_program:
            raise issue(
                "answer_cot", annotation, "a P-CoT program where an N-CoT was requested (cot='nl'); pass cot='python'"
            )
        elif not answer_line:  # the target is the annotation as written: the reward must find the gold in it
            if not annotation.strip():
                raise issue("answer_cot", annotation, "empty: the SFT target is the annotation as written")
            stated = fmt.extract(annotation)
            if stated is None or not fmt.is_correct(stated, gold):
                flags.append(issue("answer_cot", f"stated {stated!r}, answer_value {value!r}", STATED_ANSWER_MISMATCH))
        else:
            if not annotation.strip():
                flags.append(issue("answer_cot", annotation, EMPTY_COT))
            stated = stated_answer(annotation)
            if stated is not None and not _reward_accepts(fmt, stated, gold):
                flags.append(issue("answer_cot", f"stated {stated!r}, answer_value {value!r}", STATED_ANSWER_MISMATCH))
        formatted = sft_example(question, annotation, answer, cot, chat=chat, answer_line=answer_line)

    extra = {k: v for k, v in row.items() if k not in RAW_FIELDS and k not in _OUTPUT_COLUMNS}
    return {
        **formatted,
        "item_id": item_id,
        "answer": answer,
        "answer_format": fmt.name,
        "cot": cot,
        "question": question,
        **extra,
    }


_OUTPUT_COLUMNS = ("prompt", "completion", "completion_prefix", "answer", "answer_format", "cot")


def _empty_columns(kind: str) -> list[str]:
    head = ["prompt", "completion"] if kind == "sft" else ["prompt", "completion_prefix"]
    return [*head, "item_id", "answer", "answer_format", "cot", "question"]


def _reward_accepts(fmt: AnswerFormat, stated: str, gold: Any) -> bool:
    """Whether the reward would score an answer line stating ``stated`` as correct for ``gold``."""
    pred = fmt.extract(f"{ANSWER_TRIGGER} {stated}")
    return pred is not None and fmt.is_correct(pred, gold)


def _report(stats: LoadStats) -> None:
    where = f"{stats.dataset} ({stats.source})"
    for reason, ids in stats.skipped.items():
        logger.warning("%s: skipped %d rows: %s; first ids: %s", where, len(ids), reason, ", ".join(ids[:_SHOW_IDS]))
    for reason, ids in stats.flagged.items():
        logger.warning(
            "%s: %d rows flagged (kept) for %s; first ids: %s", where, len(ids), reason, ", ".join(ids[:_SHOW_IDS])
        )
