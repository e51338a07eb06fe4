"""The ReFT reward: grade completions against gold answers, one by one, in batches, for dataset rows
(:func:`grade_rows`, which the reward and evaluation share), or as a TRL reward function.

Reward (paper section 3; ``partial_reward`` is configurable, 0 reproduces the paper's "no partial reward" ablation):

* ``1.0`` when the extracted answer matches the gold (``"correct"``),
* ``partial_reward`` (default 0.1) when an answer was extracted but is wrong (``"wrong"``),
* ``0.0`` when nothing could be extracted (``"unparsable"``): no trigger, no number, a hedged multiple-choice
  answer, a program that fails, times out or returns something that is not an answer (NaN, a bool, a list).

The paper describes the partial reward for numeric answers; the reference code also gives it to wrong MathQA
letters, which is what ``partial_reward`` does for every format here (set it to 0 to switch it off).

P-CoT completions are programs defining ``solution()``; they only ever run inside the sandbox
(:func:`reft_trl.sandbox.run_programs`), all programs of a batch in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reft_trl import sandbox
from reft_trl.rewards.cot import PROGRAM_HEADER, check_cot, completion_text, program_text, split_program
from reft_trl.rewards.extractors import AnswerFormat, get_answer_format

__all__ = [
    "AnswerReward",
    "Outcome",
    "grade_completions",
    "grade_rows",
    "score_completion",
    "score_completions",
    "score_rows",
]


@dataclass(frozen=True)
class Outcome:
    """How one completion was graded: the extracted ``answer`` (``None`` if nothing), its ``status`` and ``reward``."""

    answer: Any
    status: Literal["correct", "wrong", "unparsable"]
    reward: float


def _per_item(value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (str, AnswerFormat)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries but there are {n} completions.")
    return values


def grade_completions(
    completions: Sequence[str],
    golds: Sequence[Any],
    *,
    answer_format: str | AnswerFormat | Sequence[str | AnswerFormat] = "numeric",
    cot: str | Sequence[str] = "nl",
    partial_reward: float = 0.1,
    abs_tol: float | None = None,
    rel_tol: float | None = None,
    timeout: float | None = None,
    pool: Any = None,
) -> list[Outcome]:
    """Grade each completion against its gold answer; all programs run in parallel in one sandbox call.

    Args:
        completions: N-CoT texts, or for ``cot="python"`` whole programs starting at ``def solution():``.
        golds: gold answers, parsed by each item's format (``"1,000"``, ``"7.0"``, ``18``, ``"c"``).
        answer_format: a registered format name or an :class:`AnswerFormat`, or one per item.
        cot: ``"nl"`` or ``"python"``, or one per item.
        partial_reward: reward for an extracted but wrong answer.
        abs_tol, rel_tol: override the numeric tolerance (default ``abs_tol=1e-2``, ``rel_tol=0``); formats that do
            not compare numbers with :func:`~reft_trl.rewards.extractors.numbers_close` ignore them.
        timeout, pool: passed to :func:`~reft_trl.sandbox.run_programs`.

    Raises:
        ValueError: unknown format or cot, mismatched lengths, or a gold answer that cannot be parsed.
    """
    n = len(completions)
    if len(golds) != n:
        raise ValueError(f"Got {n} completions but {len(golds)} gold answers.")
    formats = [
        get_answer_format(f).with_tolerance(abs_tol=abs_tol, rel_tol=rel_tol)
        for f in _per_item(answer_format, n, "answer_format")
    ]
    cots = _per_item(cot, n, "cot")
    for c in set(cots):
        check_cot(c)
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise TypeError(f"Completion {i} is a {type(text).__name__}, expected str.")

    parsed_golds = []
    for i, (fmt, gold) in enumerate(zip(formats, golds)):
        try:
            parsed_golds.append(fmt.parse_gold(gold))
        except ValueError as e:
            raise ValueError(f"Gold answer of item {i}: {e}") from e

    program_items = [i for i, c in enumerate(cots) if c == "python"]
    results = (
        sandbox.run_programs([completions[i] for i in program_items], timeout, pool=pool) if program_items else []
    )
    program_values = dict(zip(program_items, results))

    outcomes = []
    for i, (fmt, text, gold) in enumerate(zip(formats, completions, parsed_golds)):
        if i in program_values:
            value = program_values[i]
            answer = None if value is None else fmt.from_program(value)
        else:
            answer = fmt.extract(text)
        if answer is None:
            outcomes.append(Outcome(None, "unparsable", 0.0))
        elif fmt.is_correct(answer, gold):
            outcomes.append(Outcome(answer, "correct", 1.0))
        else:
            outcomes.append(Outcome(answer, "wrong", float(partial_reward)))
    return outcomes


def score_completions(completions: Sequence[str], golds: Sequence[Any], **kwargs: Any) -> list[float]:
    """Rewards for a batch (1.0 / ``partial_reward`` / 0.0): :func:`grade_completions`' rewards, same arguments."""
    return [o.reward for o in grade_completions(completions, golds, **kwargs)]


def score_completion(
    completion: str,
    gold: Any,
    *,
    answer_format: str | AnswerFormat = "numeric",
    cot: str = "nl",
    partial_reward: float = 0.1,
    **kwargs: Any,
) -> float:
    """Reward of one completion: 1.0 correct, ``partial_reward`` wrong, 0.0 nothing extracted.

    Keyword arguments as for :func:`grade_completions` (``abs_tol``, ``rel_tol``, ``timeout``, ``pool``).
    """
    return score_completions(
        [completion], [gold], answer_format=answer_format, cot=cot, partial_reward=partial_reward, **kwargs
    )[0]


def grade_rows(
    rows: Sequence[Mapping[str, Any]],
    completions: Sequence[Any],
    *,
    answer_format: str | AnswerFormat = "numeric",
    cot: str = "nl",
    answer_column: str = "answer",
    format_column: str = "answer_format",
    cot_column: str = "cot",
    **grading: Any,
) -> list[Outcome]:
    """Grade ``completions[i]`` for the dataset row ``rows[i]``: the one place where a row's columns become what
    :func:`grade_completions` grades (:class:`AnswerReward` and :mod:`reft_trl.evaluation` both call it).

    * The gold is the row's ``answer_column``; its answer format the row's ``format_column`` and its CoT the row's
      ``cot_column``, where the row has them (not ``None``), else ``answer_format`` / ``cot``.
    * A completion may be a plain string or a conversation (the last assistant message counts:
      :func:`reft_trl.rewards.cot.completion_text`).
    * A P-CoT completion is graded as the whole program (:func:`reft_trl.rewards.cot.program_text`): a completion
      that starts with ``def solution():`` as it is, otherwise the row's ``completion_prefix`` (the header that ended
      the prompt; ``reft_trl.data`` writes it in every prompt-only row) followed by the completion, or, for a row
      without that column, the row's ``prompt`` from its last ``def solution():`` on followed by the completion.

    ``grading`` (``partial_reward``, ``abs_tol``, ``rel_tol``, ``timeout``, ``pool``) goes to
    :func:`grade_completions`; all programs of the batch run in one sandbox call.
    """
    if len(completions) != len(rows):
        raise ValueError(f"Got {len(completions)} completions for {len(rows)} rows.")
    formats = [answer_format if row.get(format_column) is None else row[format_column] for row in rows]
    cots = [cot if row.get(cot_column) is None else row[cot_column] for row in rows]
    texts = [
        program_text(c, prefix=row.get("completion_prefix"), prompt=row.get("prompt"))
        if row_cot == "python"
        else completion_text(c)
        for row, c, row_cot in zip(rows, completions, cots)
    ]
    return grade_completions(
        texts,
        [row[answer_column] for row in rows],
        answer_format=formats,
        cot=cots,
        **grading,
    )


def score_rows(rows: Sequence[Mapping[str, Any]], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """Rewards for a batch of rows (1.0 / ``partial_reward`` / 0.0): :func:`grade_rows`' rewards, same arguments."""
    return [o.reward for o in grade_rows(rows, completions, **kwargs)]


def _ends_with_program_header(prompt: Any, prefix: Any) -> bool:
    """Whether a standard-format row is a P-CoT row: its ``completion_prefix`` is, or its text prompt ends with, a
    ``def solution():`` header (conversational P-CoT prompts hold no header: the assistant writes the program)."""
    if isinstance(prefix, str) and prefix.lstrip().startswith(PROGRAM_HEADER):
        return True
    if not isinstance(prompt, str) or PROGRAM_HEADER not in prompt:
        return False
    try:
        _, body = split_program(prompt[prompt.rfind(PROGRAM_HEADER) :])
    except ValueError:
        return False
    return not body.strip()


class AnswerReward:
    """A TRL reward function (``reward_funcs=[AnswerReward()]``) giving the ReFT answer reward.

    Works unchanged in ``trl.GRPOTrainer``, ``trl.RLOOTrainer`` and ``ReFTTrainer``: called as
    ``reward(prompts, completions, **columns)``, it reads the gold from the ``answer_column`` dataset column and,
    when present, the per-row ``format_column`` (an answer format name) and ``cot_column`` (``"nl"``/``"python"``);
    absent columns fall back to the constructor's defaults. The batch is graded by :func:`grade_rows` on rows made
    of TRL's columns (each row's prompt, gold, format, cot and ``completion_prefix``), the same function evaluation
    grades with: completions may be plain strings or conversations (the last assistant message counts), a P-CoT
    program is the row's ``completion_prefix`` (or, without that column, the prompt's ``def solution():`` header)
    plus the completion, and the whole batch runs in one sandbox call.

    After each call ``last_outcomes`` holds one :class:`Outcome` per completion. When TRL passes ``log_metric``, the
    batch's ``accuracy`` (fraction correct) and ``unparsable`` (fraction with nothing extracted) are logged (names
    prefixed by ``metric_prefix``); when it passes ``log_extra``, the extracted answer and status are added to the
    completions table as ``<name>/answer`` and ``<name>/status``.

    Args:
        answer_format, cot, partial_reward, abs_tol, rel_tol, timeout, pool: as in :func:`grade_completions`.
        answer_column, format_column, cot_column: dataset column names.
        name: the ``__name__`` TRL uses for the reward's log columns (``rewards/<name>/mean``).
        metric_prefix: prefix of the logged metric names, for several instances in one trainer.
    """

    def __init__(
        self,
        answer_format: str | AnswerFormat = "numeric",
        cot: str = "nl",
        *,
        partial_reward: float = 0.1,
        answer_column: str = "answer",
        format_column: str = "answer_format",
        cot_column: str = "cot",
        abs_tol: float | None = None,
        rel_tol: float | None = None,
        timeout: float | None = None,
        pool: Any = None,
        name: str = "answer_reward",
        metric_prefix: str = "",
    ) -> None:
        get_answer_format(answer_format)  # fail early on an unknown name
        check_cot(cot)
        self.answer_format = answer_format
        self.cot = cot
        self.partial_reward = partial_reward
        self.answer_column = answer_column
        self.format_column = format_column
        self.cot_column = cot_column
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol
        self.timeout = timeout
        self.pool = pool
        self.__name__ = name
        self.metric_prefix = metric_prefix
        self.last_outcomes: list[Outcome] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(answer_format={self.answer_format!r}, cot={self.cot!r}, name={self.__name__!r})"

    def validate_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """What would make this reward fail or silently score 0 on these dataset rows: one line per bad row, naming
        its index (and ``item_id`` when the rows have one) and the field. An empty list means every row is usable.

        Checked: the gold (the ``answer_column``) is present and its answer format's ``parse_gold`` accepts it, the
        row's answer format is registered, its cot is ``"nl"`` or ``"python"``, and a row whose prompt ends with a
        P-CoT program header (``def solution():``, or whose ``completion_prefix`` is one) is not scored as N-CoT:
        without a ``cot`` column (or with ``cot="nl"``) every completion of such a row would score 0. Trainers call
        this before step 0 (:class:`reft_trl.trainers.rollout.RolloutTrainer`)."""
        problems = []
        for i, row in enumerate(rows):
            where = f"row {i}" + (f" (item_id {row['item_id']})" if row.get("item_id") is not None else "")
            found = []
            fmt = cot = None
            row_format, row_cot = row.get(self.format_column), row.get(self.cot_column)
            try:
                fmt = get_answer_format(self.answer_format if row_format is None else row_format)
            except ValueError as err:
                found.append(f"field {self.format_column!r}: {err}")
            try:
                cot = check_cot(self.cot if row_cot is None else row_cot)
            except ValueError as err:
                found.append(f"field {self.cot_column!r}: {err}")
            if self.answer_column not in row or row[self.answer_column] is None:
                found.append(f"field {self.answer_column!r}: no gold answer")
            elif fmt is not None:
                try:
                    fmt.parse_gold(row[self.answer_column])
                except (ValueError, TypeError) as err:
                    found.append(f"field {self.answer_column!r}: {err}")
            if cot == "nl" and _ends_with_program_header(row.get("prompt"), row.get("completion_prefix")):
                source = f"its {self.cot_column!r} column" if row_cot is not None else "the reward's default cot"
                found.append(
                    f"field {self.cot_column!r}: the prompt ends with a P-CoT program header ('def solution():') but "
                    f"the row is scored as N-CoT (cot 'nl' from {source}), so every completion would score 0; give "
                    f"the rows a {self.cot_column!r} column with 'python' (reft_trl.data's loaders write it) or use "
                    "AnswerReward(cot='python')"
                )
            if found:
                problems.append(f"{where}, " + "; ".join(found))
        return problems

    def __call__(
        self,
        prompts: Sequence[Any] | None = None,
        completions: Sequence[Any] = (),
        *,
        log_metric: Callable[[str, float], None] | None = None,
        log_extra: Callable[[str, list], None] | None = None,
        **columns: Any,
    ) -> list[float]:
        n = len(completions)
        if self.answer_column not in columns:
            raise KeyError(
                f"{self.__name__}: the dataset has no {self.answer_column!r} column with the gold answers "
                f"(columns passed: {sorted(k for k in columns if k not in ('trainer_state', 'completion_ids'))})."
            )
        optional = (self.format_column, self.cot_column, "completion_prefix")
        present = {self.answer_column: columns[self.answer_column]}
        present |= {k: columns[k] for k in optional if k not in present and columns.get(k)}
        prompts = list(prompts) if prompts is not None else [None] * n
        rows = [
            {"prompt": prompt, **dict(zip(present, values))}
            for prompt, *values in zip(prompts, *present.values(), strict=True)
        ]
        outcomes = grade_rows(
            rows,
            completions,
            answer_format=self.answer_format,
            cot=self.cot,
            partial_reward=self.partial_reward,
            answer_column=self.answer_column,
            format_column=self.format_column,
            cot_column=self.cot_column,
            abs_tol=self.abs_tol,
            rel_tol=self.rel_tol,
            timeout=self.timeout,
            pool=self.pool,
        )
        self.last_outcomes = outcomes
        if log_metric is not None and n:
            log_metric(f"{self.metric_prefix}accuracy", sum(o.status == "correct" for o in outcomes) / n)
            log_metric(f"{self.metric_prefix}unparsable", sum(o.status == "unparsable" for o in outcomes) / n)
        if log_extra is not None:
            log_extra(f"{self.__name__}/answer", [None if o.answer is None else str(o.answer) for o in outcomes])
            log_extra(f"{self.__name__}/status", [o.status for o in outcomes])
        return [o.reward for o in outcomes]
