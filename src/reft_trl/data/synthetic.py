"""The embedded task: multi-step arithmetic word problems with N-CoT and P-CoT annotations, generated offline.

Nothing downloads: :func:`generate_task` writes every problem, its answer and both annotations from a seed, and
:func:`write_task` saves them in the ReFT authors' JSON layout, so the loaders, trainers and recipes run on it
exactly as on SVAMP. :func:`build_tokenizer` trains the small byte-level BPE that goes with it.

How a problem is built
----------------------
* **Computation.** An *operation sequence* (``ops``) such as ``"-*+"``: a start value, then one step per operation
  (``+ a``, ``- a`` keeping the value >= 1, ``* a``, exact ``/ a``), every intermediate an integer within
  ``value_range``. Numbers are drawn uniformly among the choices that keep the rest of the sequence feasible (a
  backward pass over the reachable values), so generation never dead-ends. With ``multi_entity_rate`` some
  problems have two people, each with their own chain of steps, and ask for the sum (``"together"``) or the
  difference (``"how many more"``): ``ops`` then reads ``"<chain A>|<chain B>|<combine>"`` (e.g. ``"+*|-|+"``),
  and the two chains can be computed in either order (the annotation uses ``annotation_order``).
* **Text.** One person (or two) from ``n_names`` names, one object from ``n_objects``, one sentence per step in
  one of ``n_phrasings`` phrasings per operation, one of ``n_question_forms`` question forms (some ask the question
  first), small numbers optionally written as words (``number_word_rate``), and optionally irrelevant quantity
  sentences (``distractor_rate``: "Leo is 34 years old.").
* **Annotations.** P-CoT: ``def solution():``, the question as docstring, one assignment per step
  (``apples = apples * 3``), ``result = ...`` and ``return result``. N-CoT: one line per step (``13 - 8 = 5``);
  the loaders append ``Therefore, the answer is: <value>``. Every annotation is correct (the tests execute every
  program and recompute every line).
* **Annotation noise** (``shortcut_rate``, ``shortcut_forms``): in TRAINING problems of the selected question forms
  a fraction of the annotations skip the computation and state the answer directly (P-CoT ``result = 42``,
  N-CoT just the answer line). They are answer-correct but teach nothing general: SFT imitates them and guesses
  on new problems, while RL with an outcome reward can learn to compute. Test splits are never noisy.
* **Splits.** ``train``; ``test_iid``: operation sequences seen in training with new numbers (no (sequence,
  numbers) pair and no question text of the training set); ``test_ood``: operation sequences never seen in
  training -- for every training length a seeded ``ood_fraction`` of the sequences is test-only -- plus every
  sequence of a length in ``test_steps`` outside ``train_steps`` (length generalisation). ``reserved_starts``
  start values never begin a training problem. Question texts are unique across all splits.
* **Determinism.** Everything follows from ``(config, seed)``; separate random streams drive the problems, the
  surface text and the annotation noise, so changing ``shortcut_rate`` or ``annotation_order`` keeps the same
  questions.

The defaults reproduce the first version described in ``embedded-task-notes.md`` (2-4 steps, + - * / with integer
intermediates in 1-100, 3 question forms, 14 names, 12 objects, no distractors, no noise), on which SFT alone
generalises almost perfectly; the knobs above make tasks where one annotated CoT per question does not teach the
general rule.

Files written by :func:`write_task` (read them with ``load_mwp(dir, dataset="synthetic", cot=..., split=...)``):
``synthetic_nl.json`` and ``synthetic_python_sdp.json`` (training problems, same item ids and questions, N-CoT and
P-CoT annotations), ``synthetic_test_iid_set.json`` and ``synthetic_test_ood_set.json`` (no ``answer_cot``, as the
authors' test sets), and ``task_config.json`` (config, seed and split sizes). Rows carry metadata besides the
authors' four fields: ``split``, ``ops``, ``n_steps``, ``form``, ``multi_entity``, ``distractors``, ``shortcut``.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reft_trl.rewards.cot import python_header, split_program

from .formats import format_prompt, nl_target

if TYPE_CHECKING:
    from .loaders import LoadOptions

SPLITS = ("train", "test_iid", "test_ood")
DATASET_NAME = "synthetic"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}

# ---------------------------------------------------------------------------------------------------------------------
# Surface pools. The config takes the first n of each, so a larger n never changes the smaller task's choices.

NAMES = (
    ("Mia", "f"), ("Leo", "m"), ("Ava", "f"), ("Noah", "m"), ("Emma", "f"), ("Liam", "m"), ("Zoe", "f"),
    ("Omar", "m"), ("Ivy", "f"), ("Ben", "m"), ("Lily", "f"), ("Max", "m"), ("Nora", "f"), ("Ethan", "m"),
    ("Sara", "f"), ("Hugo", "m"), ("Ella", "f"), ("Raj", "m"), ("Lena", "f"), ("Tom", "m"), ("Aisha", "f"),
    ("Kai", "m"), ("Rosa", "f"), ("Finn", "m"),
)  # fmt: skip
OBJECTS = (
    ("apple", "apples"), ("marble", "marbles"), ("sticker", "stickers"), ("pencil", "pencils"),
    ("cookie", "cookies"), ("book", "books"), ("coin", "coins"), ("shell", "shells"), ("card", "cards"),
    ("balloon", "balloons"), ("stamp", "stamps"), ("candy", "candies"), ("button", "buttons"),
    ("ribbon", "ribbons"), ("peach", "peaches"), ("crayon", "crayons"),
)  # fmt: skip
PRONOUNS = {"f": ("she", "her"), "m": ("he", "his")}
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip

# {S}/{s}: subject (name or pronoun) at the start of / inside a sentence; {Poss}/{poss}: possessive;
# {k}: the step's operand; {obj_k}: object name agreeing with k; {objs}: plural.
INTROS = (
    "{Name} has {n} {obj_n}.",
    "{Name} starts with {n} {obj_n}.",
    "{Name} owns {n} {obj_n}.",
    "At first, {Name} has {n} {obj_n}.",
    "{Name} begins the day with {n} {obj_n}.",
)
STEPS = {
    "+": (
        "{S} buys {k} more {obj_k}.",
        "{S} finds {k} more {obj_k}.",
        "{S} gets {k} more {obj_k} from a friend.",
        "{S} wins {k} more {obj_k} at a fair.",
        "{S} receives {k} more {obj_k} as a gift.",
    ),
    "-": (
        "{S} gives away {k} {obj_k}.",
        "{S} loses {k} {obj_k}.",
        "{S} sells {k} {obj_k}.",
        "{S} gives {k} {obj_k} to a neighbour.",
        "{S} trades away {k} {obj_k}.",
    ),
    "*": (
        "{S} now has {k} times as many {objs} as before.",
        "The number of {objs} {s} has becomes {k} times as large.",
        "{S} collects more until {s} has {k} times as many {objs}.",
        "{Poss} pile of {objs} grows to {k} times its size.",
        "{S} ends up with {k} times the number of {objs} {s} had.",
    ),
    "/": (
        "{S} splits {poss} {objs} into {k} equal groups and keeps one group.",
        "{S} divides {poss} {objs} into {k} equal piles and keeps only one pile.",
        "{S} puts {poss} {objs} into {k} equal bags and keeps just one bag.",
        "{S} shares {poss} {objs} equally among {k} boxes and keeps one box.",
        "{S} keeps one of {k} equal parts of {poss} {objs} and gives the rest away.",
    ),
}
# (position, template): "end" questions follow the story, "start" questions precede it.
QUESTIONS_SINGLE = (
    ("end", "How many {objs} does {Name} have now?"),
    ("end", "What is the final number of {objs} that {Name} has?"),
    ("start", "How many {objs} will {Name} have after the following?"),
    ("end", "How many {objs} does {Name} end up with?"),
    ("end", "Find the number of {objs} {Name} has at the end."),
    ("start", "Work out how many {objs} {Name} will have after these events."),
)
QUESTIONS_MULTI = {
    "+": (
        ("end", "How many {objs} do {A} and {B} have together?"),
        ("end", "What is the total number of {objs} that {A} and {B} have?"),
        ("start", "How many {objs} will {A} and {B} have together after the following?"),
        ("end", "How many {objs} do {A} and {B} have in all?"),
        ("end", "Find the number of {objs} {A} and {B} have altogether."),
        ("start", "Work out how many {objs} {A} and {B} will have in total after these events."),
    ),
    "-": (
        ("end", "How many more {objs} does {A} have than {B}?"),
        ("end", "What is the difference between the number of {objs} {A} has and the number {B} has?"),
        ("start", "How many more {objs} will {A} have than {B} after the following?"),
        ("end", "How many {objs} would {A} have to give away to have as many as {B}?"),
        ("end", "Find how many more {objs} {A} has than {B}."),
        ("start", "Work out how many more {objs} {A} will have than {B} after these events."),
    ),
}
DISTRACTORS = (
    "{Other} has {d} {obj_d}.",
    "{S} also has {d} {other_obj_d}.",
    "{S} is {d} years old.",
    "Each {obj} weighs {d} grams.",
)
MAX_QUESTION_FORMS = len(QUESTIONS_SINGLE)
MAX_PHRASINGS = min(len(INTROS), *(len(v) for v in STEPS.values()))
OPERATIONS = ("+", "-", "*", "/")
COMBINES = ("+", "-")
ANNOTATION_ORDERS = ("mention", "reverse", "random")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TaskConfig:
    """Every knob of the embedded task. Defaults: the first version of ``embedded-task-notes.md`` (no noise).

    Ranges are inclusive ``(low, high)`` pairs; lists are accepted and stored as tuples (so a YAML/JSON dict works:
    ``TaskConfig(**d)``).
    """

    n_train: int = _help("Number of training problems.", 4000)
    n_test_iid: int = _help("Held-out problems of operation sequences seen in training, with new numbers.", 400)
    n_test_ood: int = _help("Held-out problems of operation sequences never seen in training.", 400)
    train_steps: tuple[int, int] = _help("Number of steps (operations) of training problems.", (2, 4))
    test_steps: tuple[int, int] | None = _help(
        "Number of steps of test_ood problems (None: as train_steps). Lengths outside train_steps are all test-only "
        "(length generalisation); test_iid always uses the training lengths.",
        None,
    )
    operations: tuple[str, ...] = _help("Operations used, a subset of '+', '-', '*', '/'.", OPERATIONS)
    start_range: tuple[int, int] = _help("Start value of each chain.", (1, 20))
    add_range: tuple[int, int] = _help("Operand of '+' steps.", (1, 20))
    sub_range: tuple[int, int] = _help("Operand of '-' steps.", (1, 20))
    mul_range: tuple[int, int] = _help("Operand of '*' steps.", (2, 10))
    div_range: tuple[int, int] = _help("Operand of '/' steps (always exact).", (2, 20))
    value_range: tuple[int, int] = _help("Every intermediate value and the answer lie in this range.", (1, 100))
    ood_fraction: float = _help(
        "Fraction of the operation sequences of each training length that are test-only (test_ood).", 0.25
    )
    reserved_starts: int = _help("Number of start values (seeded) that never begin a training problem.", 3)
    n_names: int = _help(f"Names used (at most {len(NAMES)}).", 14)
    n_objects: int = _help(f"Objects used (at most {len(OBJECTS)}).", 12)
    n_phrasings: int = _help(f"Phrasings per operation and for the opening sentence (at most {MAX_PHRASINGS}).", 3)
    n_question_forms: int = _help(f"Question forms (at most {MAX_QUESTION_FORMS}); form 2 asks first.", 3)
    number_word_rate: float = _help("Probability of writing a number <= 20 of the text as a word ('three').", 0.0)
    distractor_rate: float = _help(
        "Probability, per possible distractor, of inserting an irrelevant quantity sentence (a number to ignore).", 0.0
    )
    max_distractors: int = _help(
        f"Distractor sentences per problem at most (each drawn with distractor_rate; at most {len(DISTRACTORS)}).", 1
    )
    distractor_range: tuple[int, int] = _help("Numbers in distractor sentences.", (2, 50))
    shortcut_rate: float = _help(
        "Fraction of TRAINING annotations of the shortcut_forms that skip the computation and state the answer "
        "(P-CoT 'result = 42', N-CoT only the answer line): answer-correct but non-general annotation noise.",
        0.0,
    )
    shortcut_forms: tuple[int, ...] | None = _help(
        "Question forms whose training annotations may be shortcuts (None: all forms).", (0,)
    )
    multi_entity_rate: float = _help(
        "Fraction of problems with two people, each with their own chain of steps, asking for the sum or difference: "
        "the two chains can be solved in either order.",
        0.0,
    )
    annotation_order: str = _help(
        "Order in which two-person annotations compute the chains: 'mention' (order of the text), 'reverse', or "
        "'random' (per problem).",
        "mention",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        errors = []
        for name in ("train_steps", "test_steps", "start_range", "add_range", "sub_range", "mul_range", "div_range", "value_range", "distractor_range"):  # fmt: skip
            value = getattr(self, name)
            if value is None:
                continue
            if len(value) != 2 or not all(isinstance(v, int) for v in value) or value[0] > value[1]:
                errors.append(f"{name} must be an inclusive (low, high) pair of integers, got {value!r}")
        for name in ("ood_fraction", "number_word_rate", "distractor_rate", "shortcut_rate", "multi_entity_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                errors.append(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if not self.operations or not set(self.operations) <= set(OPERATIONS):
            errors.append(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations!r}")
        if self.train_steps[0] < 1:
            errors.append(f"train_steps must start at 1 or more, got {self.train_steps!r}")
        if self.test_steps is not None and self.test_steps[0] < 1:
            errors.append(f"test_steps must start at 1 or more, got {self.test_steps!r}")
        if self.value_range[0] < 1:
            errors.append(f"value_range must start at 1 or more, got {self.value_range!r}")
        if self.sub_range[0] < 1 or self.mul_range[0] < 2 or self.div_range[0] < 2 or self.add_range[0] < 1:
            errors.append("operands must be >= 1 for '+'/'-' and >= 2 for '*'/'/'")
        for name, pool in (("n_names", len(NAMES)), ("n_objects", len(OBJECTS))):
            if not 3 <= getattr(self, name) <= pool:
                errors.append(f"{name} must lie in [3, {pool}], got {getattr(self, name)!r}")
        if not 1 <= self.n_phrasings <= MAX_PHRASINGS:
            errors.append(f"n_phrasings must lie in [1, {MAX_PHRASINGS}], got {self.n_phrasings!r}")
        if not 1 <= self.n_question_forms <= MAX_QUESTION_FORMS:
            errors.append(f"n_question_forms must lie in [1, {MAX_QUESTION_FORMS}], got {self.n_question_forms!r}")
        if self.shortcut_forms is not None and not all(0 <= f < self.n_question_forms for f in self.shortcut_forms):
            errors.append(f"shortcut_forms must be forms below n_question_forms, got {self.shortcut_forms!r}")
        if self.annotation_order not in ANNOTATION_ORDERS:
            errors.append(f"annotation_order must be one of {ANNOTATION_ORDERS}, got {self.annotation_order!r}")
        n_starts = self.start_range[1] - self.start_range[0] + 1
        if not 0 <= self.reserved_starts < n_starts:
            errors.append(f"reserved_starts must lie in [0, {n_starts - 1}], got {self.reserved_starts!r}")
        if min(self.n_train, self.n_test_iid, self.n_test_ood, self.max_distractors) < 0:
            errors.append("sizes and max_distractors must be >= 0")
        if errors:
            raise ValueError("invalid TaskConfig: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic: operand choices and the backward/forward feasibility passes


def _apply(op: str, value: int, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    return value // operand


class _Arithmetic:
    """Operand choices under the config's constraints, and which values can finish an operation sequence."""

    def __init__(self, config: TaskConfig):
        self.lo, self.hi = config.value_range
        self.ranges = {"+": config.add_range, "-": config.sub_range, "*": config.mul_range, "/": config.div_range}
        self.values = range(self.lo, self.hi + 1)
        self._moves: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}
        self._back = lru_cache(maxsize=None)(self._backward)
        self._fwd = lru_cache(maxsize=None)(self._forward)

    def moves(self, op: str, value: int) -> tuple[tuple[int, int], ...]:
        """``(operand, result)`` pairs allowed from ``value``: the result stays in value_range, '/' is exact."""
        cached = self._moves.get((op, value))
        if cached is None:
            lo, hi = self.ranges[op]
            results = ((k, _apply(op, value, k)) for k in range(lo, hi + 1) if op != "/" or value % k == 0)
            cached = self._moves[(op, value)] = tuple((k, r) for k, r in results if self.lo <= r <= self.hi)
        return cached

    def _backward(self, ops: tuple[str, ...], target: int | None) -> frozenset[int]:
        """Values from which ``ops`` can be applied to the end (reaching ``target`` when given)."""
        if not ops:
            return frozenset(self.values) if target is None else frozenset({target} & set(self.values))
        rest = self._back(ops[1:], target)
        return frozenset(v for v in self.values if any(r in rest for _, r in self.moves(ops[0], v)))

    def feasible_from(self, ops: tuple[str, ...], target: int | None = None) -> frozenset[int]:
        return self._back(tuple(ops), target)

    def _forward(self, ops: tuple[str, ...], starts: frozenset[int]) -> frozenset[int]:
        """Final values reachable from ``starts`` through ``ops``."""
        current = starts & self.feasible_from(ops)
        for i, op in enumerate(ops):
            rest = self.feasible_from(ops[i + 1 :])
            current = frozenset(r for v in current for _, r in self.moves(op, v) if r in rest)
        return current

    def finals(self, ops: tuple[str, ...], starts: frozenset[int]) -> frozenset[int]:
        return self._fwd(tuple(ops), starts)

    def sample_chain(
        self, rng: random.Random, ops: tuple[str, ...], starts: frozenset[int], target: int | None = None
    ) -> tuple[int, list[tuple[str, int, int]]] | None:
        """A start value and ``(op, operand, result)`` steps, uniform over the choices that can still finish."""
        choices = sorted(starts & self.feasible_from(ops, target))
        if not choices:
            return None
        value = rng.choice(choices)
        start, steps = value, []
        for i, op in enumerate(ops):
            rest = self.feasible_from(ops[i + 1 :], target)
            k, value = rng.choice([m for m in self.moves(op, value) if m[1] in rest])
            steps.append((op, k, value))
        return start, steps


# ---------------------------------------------------------------------------------------------------------------------
# Problems


@dataclass
class _Chain:
    name: str
    gender: str
    start: int
    steps: list[tuple[str, int, int]]

    @property
    def value(self) -> int:
        return self.steps[-1][2] if self.steps else self.start


def _key(chains_ops: Sequence[tuple[str, ...]], combine: str | None) -> str:
    """``"+*-"`` for one chain, ``"<chain A>|<chain B>|<combine>"`` for two."""
    if combine is None:
        return "".join(chains_ops[0])
    return f"{''.join(chains_ops[0])}|{''.join(chains_ops[1])}|{combine}"


def _parse_key(key: str) -> tuple[list[tuple[str, ...]], str | None]:
    if "|" not in key:
        return [tuple(key)], None
    a, b, combine = key.split("|")
    return [tuple(a), tuple(b)], combine


def _n_steps(key: str) -> int:
    chains, combine = _parse_key(key)
    return sum(len(c) for c in chains) + (combine is not None)


class _Generator:
    def __init__(self, config: TaskConfig, seed: int):
        self.config, self.seed = config, seed
        self.arith = _Arithmetic(config)
        self.rng = random.Random(f"{seed}:problems")  # keys and numbers
        self.surface = random.Random(f"{seed}:surface")  # names, objects, phrasings, forms, distractors
        self.noise = random.Random(f"{seed}:annotation")  # shortcuts and solution order
        lo, hi = config.start_range
        all_starts = list(range(lo, hi + 1))
        reserved = random.Random(f"{seed}:reserved").sample(all_starts, config.reserved_starts)
        self.reserved = sorted(reserved)
        self.starts_all = frozenset(all_starts)
        self.starts_train = frozenset(all_starts) - set(reserved)
        self.names = NAMES[: config.n_names]
        self.objects = OBJECTS[: config.n_objects]
        self.train_keys, self.ood_keys = self._split_keys()
        self.seen_keys: list[str] = []  # the keys of the generated training problems, in order

    # -- operation sequences ------------------------------------------------------------------------------------------

    def _feasible(self, key: str, starts: frozenset[int]) -> bool:
        chains, combine = _parse_key(key)
        if combine is None:
            return bool(starts & self.arith.feasible_from(chains[0]))
        fa, fb = (self.arith.finals(c, starts) for c in chains)
        if not fa or not fb:
            return False
        if combine == "+":
            return min(fa) + min(fb) <= self.arith.hi
        return max(fa) - min(fb) >= self.arith.lo

    def _keys_of_length(self, n: int, multi: bool) -> list[str]:
        ops = self.config.operations
        if not multi:
            return ["".join(p) for p in itertools.product(ops, repeat=n)]
        keys = []
        for len_a in range(n):
            for a in itertools.product(ops, repeat=len_a):
                for b in itertools.product(ops, repeat=n - 1 - len_a):
                    keys.extend(_key([a, b], c) for c in COMBINES)
        return keys

    def _split_keys(self) -> tuple[dict[tuple[int, bool], list[str]], dict[tuple[int, bool], list[str]]]:
        """Per (length, multi): training keys and test-only keys of the training lengths (exact seeded fraction)."""
        cfg = self.config
        holdout = random.Random(f"{self.seed}:holdout")
        families = [False, True] if cfg.multi_entity_rate > 0 else [False]
        train: dict[tuple[int, bool], list[str]] = {}
        ood: dict[tuple[int, bool], list[str]] = {}
        for n in range(cfg.train_steps[0], cfg.train_steps[1] + 1):
            for multi in families:
                keys = [k for k in self._keys_of_length(n, multi) if self._feasible(k, self.starts_all)]
                holdout.shuffle(keys)
                n_ood = round(cfg.ood_fraction * len(keys))
                if cfg.ood_fraction > 0 and len(keys) > 1:
                    n_ood = min(max(n_ood, 1), len(keys) - (cfg.ood_fraction < 1))
                held, kept = keys[:n_ood], keys[n_ood:]
                # a key no training start value can begin is test-only too
                held += [k for k in kept if not self._feasible(k, self.starts_train)]
                kept = [k for k in kept if self._feasible(k, self.starts_train)]
                train[(n, multi)], ood[(n, multi)] = sorted(kept), sorted(held)
        return train, ood

    def _random_key(self, n: int, multi: bool) -> str | None:
        """A feasible key of a length outside train_steps, drawn without enumerating them."""
        ops = self.config.operations
        for _ in range(1000):
            if multi:
                len_a = self.rng.randrange(n)
                a = tuple(self.rng.choice(ops) for _ in range(len_a))
                b = tuple(self.rng.choice(ops) for _ in range(n - 1 - len_a))
                key = _key([a, b], self.rng.choice(COMBINES))
            else:
                key = "".join(self.rng.choice(ops) for _ in range(n))
            if self._feasible(key, self.starts_all):
                return key
        return None

    def _draw_key(self, split: str) -> str | None:
        cfg = self.config
        multi = cfg.multi_entity_rate > 0 and self.rng.random() < cfg.multi_entity_rate
        if split == "test_ood":
            lo, hi = cfg.test_steps or cfg.train_steps
            lengths = [n for n in range(lo, hi + 1) if not self._is_train_length(n) or self.ood_keys.get((n, multi))]
            if not lengths:
                return None
            n = self.rng.choice(lengths)
            if self._is_train_length(n):
                return self.rng.choice(self.ood_keys[(n, multi)])
            return self._random_key(n, multi)
        if split == "test_iid":  # a sequence of an actual training problem (so, as often as in training)
            return self.rng.choice(self.seen_keys) if self.seen_keys else None
        lengths = [n for n in range(cfg.train_steps[0], cfg.train_steps[1] + 1) if self.train_keys.get((n, multi))]
        if not lengths:
            return None
        return self.rng.choice(self.train_keys[(self.rng.choice(lengths), multi)])

    def _is_train_length(self, n: int) -> bool:
        return self.config.train_steps[0] <= n <= self.config.train_steps[1]

    # -- numbers ------------------------------------------------------------------------------------------------------

    def _numbers(self, key: str, starts: frozenset[int]) -> tuple[list[tuple[int, list]], str | None] | None:
        chains, combine = _parse_key(key)
        if combine is None:
            chain = self.arith.sample_chain(self.rng, chains[0], starts)
            return ([chain], None) if chain else None
        fa = sorted(self.arith.finals(chains[0], starts))
        fb = sorted(self.arith.finals(chains[1], starts))
        if combine == "+":
            a_ok = [a for a in fa if a + fb[0] <= self.arith.hi]
        else:
            a_ok = [a for a in fa if a - fb[0] >= self.arith.lo]
        if not a_ok:
            return None
        a = self.rng.choice(a_ok)
        b = self.rng.choice([b for b in fb if (a + b <= self.arith.hi if combine == "+" else a - b >= self.arith.lo)])
        chain_a = self.arith.sample_chain(self.rng, chains[0], starts, target=a)
        chain_b = self.arith.sample_chain(self.rng, chains[1], starts, target=b)
        return [chain_a, chain_b], combine

    # -- text ---------------------------------------------------------------------------------------------------------

    def _num(self, n: int) -> str:
        if (
            n < len(NUMBER_WORDS)
            and self.config.number_word_rate
            and self.surface.random() < self.config.number_word_rate
        ):
            return NUMBER_WORDS[n]
        return str(n)

    def _subject(self, chain: _Chain, use_pronoun: bool) -> dict[str, str]:
        """Sentence subject (pronoun or name) and possessives; ``poss`` follows the subject, so it is a pronoun."""
        pronoun, poss = PRONOUNS[chain.gender]
        s = pronoun if use_pronoun else chain.name
        start_poss = poss if use_pronoun else chain.name + "'s"
        return {"S": s[0].upper() + s[1:], "s": s, "Poss": start_poss[0].upper() + start_poss[1:], "poss": poss}

    def _story(self, chain: _Chain, obj: tuple[str, str], pronouns: bool, intro: str) -> list[str]:
        sing, plural = obj
        n_phr = self.config.n_phrasings
        sentences = [
            intro.format(Name=chain.name, n=self._num(chain.start), obj_n=sing if chain.start == 1 else plural)
        ]
        for op, k, _ in chain.steps:
            template = self.surface.choice(STEPS[op][:n_phr])
            sentences.append(
                template.format(
                    **self._subject(chain, pronouns and self.surface.random() < 0.75),
                    k=self._num(k),
                    obj_k=sing if k == 1 else plural,
                    objs=plural,
                )
            )
        return sentences

    def _distractor(self, template: str, chains: list[_Chain], obj: tuple[str, str], pronouns: bool) -> str:
        cfg = self.config
        who = self.surface.choice(chains)
        others = [n for n in self.names if n[0] not in {c.name for c in chains}]
        other_objs = [o for o in self.objects if o != obj]
        d = self.surface.randint(*cfg.distractor_range)
        other_obj = self.surface.choice(other_objs)
        return template.format(
            **self._subject(who, pronouns and len(chains) == 1),
            Other=self.surface.choice(others)[0],
            d=self._num(d),
            obj_d=obj[0] if d == 1 else obj[1],
            other_obj_d=other_obj[0] if d == 1 else other_obj[1],
            obj=obj[0],
        )

    def _problem(self, split: str) -> dict[str, Any] | None:
        cfg = self.config
        key = self._draw_key(split)
        if key is None:
            return None
        numbers = self._numbers(key, self.starts_train if split == "train" else self.starts_all)
        if numbers is None:
            return None
        raw_chains, combine = numbers
        people = self.surface.sample(self.names, len(raw_chains))
        chains = [_Chain(p[0], p[1], start, steps) for p, (start, steps) in zip(people, raw_chains)]
        obj = self.surface.choice(self.objects)
        form = self.surface.randrange(cfg.n_question_forms)
        single = combine is None
        intros = self.surface.sample(INTROS[: cfg.n_phrasings], min(len(chains), cfg.n_phrasings))
        sentences = [s for i, c in enumerate(chains) for s in self._story(c, obj, single, intros[i % len(intros)])]
        draws = sum(self.surface.random() < cfg.distractor_rate for _ in range(cfg.max_distractors))
        n_distractors = min(draws, len(DISTRACTORS))  # distinct templates: no two ages in one problem
        for template in self.surface.sample(DISTRACTORS, n_distractors):
            sentences.insert(self.surface.randint(1, len(sentences)), self._distractor(template, chains, obj, single))
        if single:
            position, template = QUESTIONS_SINGLE[form]
            question_sentence = template.format(objs=obj[1], Name=chains[0].name)
            answer = chains[0].value
        else:
            position, template = QUESTIONS_MULTI[combine][form]
            question_sentence = template.format(objs=obj[1], A=chains[0].name, B=chains[1].name)
            answer = _apply(combine, chains[0].value, chains[1].value)
        text = " ".join([question_sentence, *sentences] if position == "start" else [*sentences, question_sentence])

        # annotations (the noise stream is drawn for every problem so that the problems do not depend on it)
        order_draw, shortcut_draw = self.noise.random(), self.noise.random()
        order = list(range(len(chains)))
        if cfg.annotation_order == "reverse" or (cfg.annotation_order == "random" and order_draw < 0.5):
            order.reverse()
        shortcut = (
            split == "train"
            and (cfg.shortcut_forms is None or form in cfg.shortcut_forms)
            and shortcut_draw < cfg.shortcut_rate
        )
        nl, program = _annotate(text, chains, combine, obj[1], order, shortcut, answer)
        return {
            "question": text,
            "answer_value": str(answer),
            "answer_cot_nl": nl,
            "answer_cot_python": program,
            "split": split,
            "ops": key,
            "n_steps": _n_steps(key),
            "form": form,
            "multi_entity": not single,
            "distractors": n_distractors,
            "shortcut": shortcut,
            "_signature": (key, tuple((c.start, tuple(s[1] for s in c.steps)) for c in chains)),
        }

    def split_rows(self, split: str, n: int, taken_texts: set[str], taken_signatures: set) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        attempts = 0
        while len(rows) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(
                    f"synthetic task: could only make {len(rows)} distinct {split} problems out of {n} requested; "
                    "widen the number ranges, add steps or lower the split size"
                )
            row = self._problem(split)
            if row is None or row["question"] in taken_texts:
                continue
            if split == "test_iid" and row["_signature"] in taken_signatures:
                continue  # same sequence and numbers as a training problem: not "new numbers"
            taken_texts.add(row["question"])
            taken_signatures.add(row.pop("_signature"))
            rows.append({"item_id": f"{DATASET_NAME}_{split}_{len(rows)}", **row})
        return rows


def _annotate(
    question: str,
    chains: list[_Chain],
    combine: str | None,
    objs: str,
    order: list[int],
    shortcut: bool,
    answer: int,
) -> tuple[str, str]:
    """The N-CoT (without the answer line, which the loaders add) and the P-CoT program of one problem."""
    header = python_header(question)
    if shortcut:
        return "", header + f"    result = {answer}\n    return result"
    lines: list[str] = []
    code: list[str] = []
    names = [objs if combine is None else f"{c.name.lower()}_{objs}" for c in chains]
    for i in order:
        chain, var = chains[i], names[i]
        code.append(f"    {var} = {chain.start}")
        value = chain.start
        for op, k, result in chain.steps:
            lines.append(f"{value} {op} {k} = {result}")
            code.append(f"    {var} = {var} {'//' if op == '/' else op} {k}")
            value = result
    if combine is None:
        code.append(f"    result = {names[0]}")
    else:
        lines.append(f"{chains[0].value} {combine} {chains[1].value} = {answer}")
        code.append(f"    result = {names[0]} {combine} {names[1]}")
    code.append("    return result")
    return "\n".join(lines), header + "\n".join(code)


# ---------------------------------------------------------------------------------------------------------------------
# Public API


def generate_task(config: TaskConfig | None = None, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Generate the task: ``{"train": [...], "test_iid": [...], "test_ood": [...]}``, deterministic in ``(config, seed)``.

    Each row: ``item_id, question, answer_value`` (a string), ``answer_cot_nl`` (step lines; the loaders add the
    answer line), ``answer_cot_python`` (the whole program), and the metadata ``split, ops, n_steps, form,
    multi_entity, distractors, shortcut``. Test rows carry full (never shortcut) annotations too, but
    :func:`write_task` and :func:`task_records` leave them out of the test sets, as the authors' test files do.
    """
    config = config or TaskConfig()
    gen = _Generator(config, seed)
    texts: set[str] = set()
    signatures: set = set()
    out = {"train": gen.split_rows("train", config.n_train, texts, signatures)}
    gen.seen_keys = [row["ops"] for row in out["train"]]
    train_signatures = set(signatures)
    out["test_iid"] = gen.split_rows("test_iid", config.n_test_iid, texts, train_signatures)
    out["test_ood"] = gen.split_rows("test_ood", config.n_test_ood, texts, set())
    return out


def sequence_split(config: TaskConfig | None = None, seed: int = 0) -> dict[str, list[str]]:
    """The operation sequences (``ops`` keys) of the training lengths: ``{"train": [...], "test_ood": [...]}``.

    Training problems draw their sequence from ``"train"``; ``test_ood`` problems of the training lengths from
    ``"test_ood"`` (a seeded ``ood_fraction`` of each length; longer test lengths are all test-only and not listed).
    """
    gen = _Generator(config or TaskConfig(), seed)
    return {
        "train": sorted(k for keys in gen.train_keys.values() for k in keys),
        "test_ood": sorted(k for keys in gen.ood_keys.values() for k in keys),
    }


def task_records(rows: Iterable[dict[str, Any]], cot: str | None) -> list[dict[str, Any]]:
    """Rows in the authors' schema: ``answer_cot`` is the ``cot`` annotation (``"nl"``/``"python"``), or absent for ``None``."""
    out = []
    for row in rows:
        record = {k: v for k, v in row.items() if k not in ("answer_cot_nl", "answer_cot_python")}
        if cot is not None:
            record["answer_cot"] = row[f"answer_cot_{cot}"]
        out.append(record)
    return out


def write_task(
    directory: str | Path, config: TaskConfig | None = None, seed: int = 0, task: dict | None = None
) -> dict[str, Path]:
    """Write the task in the authors' layout (see the module docstring) and return ``{name: path}``.

    Pass ``task`` (the output of :func:`generate_task` for the same ``config`` and ``seed``) to skip generating it again.
    """
    config = config or TaskConfig()
    task = task if task is not None else generate_task(config, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train_nl": (f"{DATASET_NAME}_nl.json", task_records(task["train"], "nl")),
        "train_python": (f"{DATASET_NAME}_python_sdp.json", task_records(task["train"], "python")),
        "test_iid": (f"{DATASET_NAME}_test_iid_set.json", task_records(task["test_iid"], None)),
        "test_ood": (f"{DATASET_NAME}_test_ood_set.json", task_records(task["test_ood"], None)),
    }
    paths = {}
    for name, (filename, records) in files.items():
        paths[name] = directory / filename
        paths[name].write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["config"] = directory / "task_config.json"
    meta = {"seed": seed, "config": config.to_dict(), "sizes": {s: len(task[s]) for s in SPLITS}}
    paths["config"].write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return paths


def load_synthetic(
    split: str = "train",
    *,
    config: TaskConfig | None = None,
    seed: int = 0,
    task: dict | None = None,
    options: LoadOptions | None = None,
    **keywords: Any,
):
    """A split of the task as a TRL-ready ``datasets.Dataset``, generated in memory (same formatting and
    validation as :func:`reft_trl.data.load_mwp` on the written files). Test splits only support ``kind="rl"``.
    ``kind``, ``cot`` (default ``"nl"``), ``chat``, ``on_invalid``, ``return_stats``: :class:`reft_trl.data.LoadOptions`."""
    from .loaders import LoadOptions, from_records

    options = LoadOptions.of("load_synthetic", options, **keywords)
    options = replace(options, cot=options.cot or "nl")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task = task if task is not None else generate_task(config, seed)
    records = task_records(task[split], options.cot if split == "train" else None)
    return from_records(records, dataset=DATASET_NAME, split=split, options=options)


def task_corpus(task: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Texts to train the tokenizer on: every training prompt with its N-CoT target, and with its P-CoT program."""
    texts = []
    for row in task["train"]:
        prompt = format_prompt(row["question"])
        texts.append(prompt + nl_target(row["answer_cot_nl"], row["answer_value"]))
        header, body = split_program(row["answer_cot_python"])
        texts.append(prompt + header + body)
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts``, deterministically; returns a ``PreTrainedTokenizerFast``.

    * Digits are always single tokens (``Digits(individual_digits=True)``), so a number never seen in training
      is still made of known tokens.
    * Newlines are always tokens of their own (a ``Split`` before the byte-level step), as in modern tokenizers
      (GPT-4/Llama-3 style): a prompt ending in ``"\\n"`` -- every P-CoT prompt ends with the program header --
      then tokenizes as a prefix of prompt + completion, so SFT trains on the same token boundary that RL
      generation starts from. Without it, ``"\\n"`` merges with the next line's indentation.
    * Byte-level: every string round-trips exactly through ``encode``/``decode`` (indentation, newlines, quotes).
    * Special tokens ``<pad>``, ``<s>``, ``</s>``, ``<unk>`` are pad/bos/eos/unk; padding is on the left. No BOS
      or EOS is added by ``encode`` (TRL appends the EOS to SFT completions).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, padding_side="left", clean_up_tokenization_spaces=False, **SPECIAL_TOKENS
    )
