r"""Answer formats: how to find the final answer in a completion, parse a gold answer and compare the two.

An :class:`AnswerFormat` bundles five small functions and is looked up by name in a registry, so a new answer
style needs no change to the library: the data loaders (``reft_trl.data``), the reward (:class:`AnswerReward`) and
evaluation all go through it. Two formats are built in here, and a third, ``"math"`` (LaTeX answers such as MATH's
``\boxed{}``, compared by the optional math-verify), lives in :mod:`reft_trl.rewards.math_answers`:

``"numeric"`` (GSM8K, SVAMP, MathQA-numeric)
    The answer is the first number on the line after the LAST ``Therefore, the answer is:`` (the trigger; the
    space after the colon is optional), or after a GSM8K-style ``#### `` line, whichever comes last. Only the
    trigger's line counts: text on later lines (an EOS token, another paragraph) is ignored, and a trigger with
    nothing on its line extracts nothing. See :func:`parse_number` for the accepted spellings.
``"multiple_choice"`` (MathQA)
    The answer is one option letter ``a``-``e`` on the trigger's line, tolerant of case, quotes and brackets
    (``c``, ``C``, ``'c'``, ``(c)``, ``c )``, ``c)``, ``c.``, ``c ) 38``, ``option c``). Hedged answers (``a or b``,
    ``a, c``, ``a/b``) and a missing trigger extract nothing, so they earn reward 0: the ReFT reference gives
    0.1 to any MathQA output, which rewards guessing (paper section 4.4). See :func:`parse_choice`.

Registering your own format, e.g. ``\boxed{}`` answers compared as whitespace-free strings (this example is run as a
doctest; the built-in ``"math"`` format compares them as mathematics instead)::

    >>> from reft_trl.rewards import AnswerFormat, register_answer_format, score_completion
    >>> def last_boxed(text):
    ...     start = text.rfind("\\boxed{")
    ...     if start < 0:
    ...         return None
    ...     depth, i = 0, start + len("\\boxed")
    ...     for j in range(i, len(text)):
    ...         depth += {"{": 1, "}": -1}.get(text[j], 0)
    ...         if depth == 0:
    ...             return "".join(text[i + 1 : j].split()) or None
    ...     return None  # unbalanced braces: nothing extracted
    >>> boxed = register_answer_format(
    ...     AnswerFormat(
    ...         name="boxed",
    ...         extract=last_boxed,
    ...         parse_gold=lambda gold: "".join(str(gold).split()),
    ...         # is_correct defaults to ==, from_program to the stripped string (or finite float)
    ...     )
    ... )
    >>> score_completion("so the area is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", answer_format="boxed")
    1.0
    >>> score_completion("so the area is \\boxed{\\frac{1}{3}}.", "\\frac{1}{2}", answer_format="boxed")
    0.1

A format object can also be passed directly wherever a format name is accepted.
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any

__all__ = [
    "ANSWER_TRIGGER",
    "AnswerFormat",
    "answer_line",
    "get_answer_format",
    "multiple_choice_format",
    "normalize_number",
    "numbers_close",
    "numeric_format",
    "parse_choice",
    "parse_number",
    "register_answer_format",
]

ANSWER_TRIGGER = "Therefore, the answer is:"
"""The N-CoT answer trigger. Targets write it followed by one space and the gold (``reft_trl.data.nl_target``);
extraction accepts it with or without that space."""


def answer_line(text: str, trigger: str = ANSWER_TRIGGER, *, gsm8k_marker: bool = True) -> str | None:
    """The rest of the line after the last answer marker in ``text``, or ``None`` if there is no marker.

    Markers are ``trigger`` anywhere in the text and, with ``gsm8k_marker``, ``####`` at the start of a line
    (GSM8K's native final line); the one that occurs last wins.
    """
    pattern = re.escape(trigger) + (r"|^[ \t]*####" if gsm8k_marker else "")
    markers = list(re.finditer(pattern, text, flags=re.MULTILINE))
    if not markers:
        return None
    return text[markers[-1].end() :].split("\n", 1)[0]


# ----------------------------------------------------------------------------------------------- numbers

_NUMBER = re.compile(
    r"""
    (?:\\boxed\{|\\\(|\\\[|[\s*_(\[{<"'`\u201c\u2018])*           # decoration before the number: **, (, \boxed{, quotes
    (?P<sign1>[-+\u2212\u2013])?                                  # sign: + - (unicode minus, en dash)
    (?:\\?\$|[\u20ac\u00a3\u00a5\u20b9])?                          # currency: $ \$ EUR GBP JPY INR
    (?P<sign2>[-+\u2212\u2013])?
    (?:
        (?P<whole>\d+)[ \t]+(?P<mnum>\d+)/(?P<mden>\d+)            # mixed number: 1 1/2
      | (?P<num>\d+)/(?P<den>\d+)                                  # fraction: 3/4
      | (?P<dec>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)        # 1,000  1000  36.5  .75
        (?P<exp>[eE][-+]?\d+)?                                     # 1e3
    )
    """,
    re.VERBOSE,
)
# What may NOT follow a number: more digits, a digit after `.` `,` `/` `:` or a dash, or another numeric character
# (`½`, `²`). Such tails make the token ambiguous (`1,5`, `1,0000`, `36.0.5`, `3/4/5`, `3:30`, `36-40`, `1½`), so
# nothing is extracted.
_AMBIGUOUS_TAIL = re.compile(r"\d|[-.,/:\u2212\u2013]\d")


def _ambiguous_tail(tail: str) -> bool:
    return bool(_AMBIGUOUS_TAIL.match(tail)) or (tail[:1] != "" and unicodedata.category(tail[0]) == "No")


def parse_number(text: str, *, whole: bool = False) -> float | None:
    """Parse the first number-ish token at the start of ``text`` the way a person reads a final answer.

    Accepted (value in brackets): ``36``, ``36.`` and ``36.0.`` (36), ``+5`` (5), ``-5``/``−5`` (-5), ``1,000`` and
    ``1,000,000`` (thousands groups of exactly three digits), ``$36``, ``-$5``/``$-5``, ``\\$36``, ``€36``,
    ``36%`` (36: percentages are kept in percent, as in GSM8K golds), ``36 apples and 2 pears`` (36: only the
    first token counts, the rest of the line is ignored), ``1e3`` (1000), ``.75``, ``3/4`` (0.75), ``1 1/2`` (1.5: a
    mixed number needs a proper fraction), ``(36)``, ``**36**``, ``\\boxed{36}``, ``36</s>``.

    Rejected (``None``): empty text; text starting with a word (``about 36``, ``nan``, ``inf``); non-finite values
    (``1e999``); a zero denominator; ambiguous tokens where a digit follows the number after ``,`` ``.`` ``/``
    ``:`` or a dash (``1,5`` could be 1.5 or the list 1 and 5; ``1,0000``; ``36.0.5``; ``3:30``; ``36-40``) or a
    unicode numeric character follows (``1½``, ``10²``: not supported, so not misread as 1 or 10); a sign on both
    sides of the currency; a dash followed by a space (``- 5`` reads as a bullet); ``1 7/4`` (an improper "mixed
    number"). Not supported: space-grouped thousands (``1 000`` reads as 1) and words (``twelve``).

    With ``whole=True`` (used for gold answers) nothing but whitespace, ``%`` or a final ``.`` may follow.
    """
    m = _NUMBER.match(text)
    if m is None:
        return None
    tail = text[m.end() :]
    if _ambiguous_tail(tail) or (whole and tail.strip().rstrip(".%").strip()):
        return None
    if m["sign1"] and m["sign2"]:
        return None
    negative = (m["sign1"] or m["sign2"] or "+") != "+"
    if m["whole"] is not None:
        numerator, denominator = int(m["mnum"]), int(m["mden"])
        if not 0 < numerator < denominator:
            return None
        value = float(int(m["whole"]) + Fraction(numerator, denominator))
    elif m["num"] is not None:
        if int(m["den"]) == 0:
            return None
        value = float(Fraction(int(m["num"]), int(m["den"])))
    else:
        value = float(m["dec"].replace(",", "") + (m["exp"] or ""))
    if not math.isfinite(value):
        return None
    return -value if negative else value


def numbers_close(pred: float, gold: float, *, abs_tol: float = 1e-2, rel_tol: float = 0.0) -> bool:
    """``|pred - gold| <= max(abs_tol, rel_tol * max(|pred|, |gold|))`` (``math.isclose``).

    The default is the ReFT reference's absolute tolerance of 1e-2; ``rel_tol`` (e.g. 1e-4) helps for large answers.
    """
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


def _real(value: Any) -> float | None:
    """A finite float from a real number (int, float, numpy, Fraction, Decimal, sympy), else ``None``."""
    if isinstance(value, bool):
        return None
    is_sympy_real = type(value).__module__.startswith("sympy") and getattr(value, "is_real", False)
    if not (isinstance(value, (numbers.Real, Decimal)) or is_sympy_real):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _numeric_extract(text: str, *, trigger: str = ANSWER_TRIGGER) -> float | None:
    line = answer_line(text, trigger)
    return None if line is None else parse_number(line)


def _numeric_from_program(value: Any) -> float | None:
    return parse_number(value) if isinstance(value, str) else _real(value)


def normalize_number(text: Any) -> str:
    """A numeric gold as it is written in targets and the ``answer`` column: the text after a GSM8K ``####`` if any,
    without whitespace, thousands commas, ``$`` or a final ``%`` or ``.`` (``" $1,000. "`` -> ``"1000"``).

    Meant for golds that :func:`_numeric_parse_gold` accepts (it does not validate): ``"1,5"`` would become ``"15"``.
    """
    text = str(text).rsplit("####", 1)[-1].strip()
    return text.replace(",", "").replace("$", "").strip().rstrip(".%").strip()


def _numeric_parse_gold(gold: Any) -> float:
    value = _real(gold)
    if value is None and isinstance(gold, str):
        text = gold.rsplit("####", 1)[-1]  # also accept a whole GSM8K rationale as the gold
        value = parse_number(text, whole=True)
    if value is None:
        raise ValueError(f"Cannot parse the gold answer {gold!r} as a finite number (numeric answer format).")
    return value


# ----------------------------------------------------------------------------------------------- letters


def parse_choice(text: str, letters: str = "abcde") -> str | None:
    """Parse one option letter (lower-cased) at the start of ``text``, or ``None``.

    Accepted: ``c``, ``C``, ``'c'``, ``"c"``, ``(c)``, ``[c]``, ``c )``, ``c)``, ``c.``, ``c:``, ``**c**``,
    ``c ) 38`` (the option's text may follow), ``option c``. Rejected: anything that is not a single letter token
    from ``letters`` (``38``, ``f``, ``the answer``), ``a/b``, and any line naming a second option letter as a
    standalone token (``a or b``, ``a, c``, ``a and c``), so hedging never earns a reward. This is deliberately
    conservative: ``c because a is too small`` is rejected too.
    """
    m = re.match(
        r"""[\s(\[{<*"'`\u201c\u2018]*(?:(?:option|choice)\s*[\s(\[{<*"'`\u201c\u2018]*)?([a-z])(?=$|[\s)\]}<>.:,;*"'`\u201d\u2019])""",
        text,
        flags=re.IGNORECASE,
    )
    if m is None or m[1].lower() not in letters:
        return None
    others = re.findall(
        r"(?<![a-z0-9])[" + re.escape(letters) + r"](?![a-z0-9])", text[m.end() :], flags=re.IGNORECASE
    )
    if any(other.lower() != m[1].lower() for other in others):
        return None
    return m[1].lower()


def _choice_extract(text: str, *, trigger: str = ANSWER_TRIGGER, letters: str = "abcde") -> str | None:
    line = answer_line(text, trigger)
    return None if line is None else parse_choice(line, letters)


def _choice_from_program(value: Any, *, letters: str = "abcde") -> str | None:
    return parse_choice(value, letters) if isinstance(value, str) else None


def _choice_parse_gold(gold: Any, *, letters: str = "abcde") -> str:
    letter = parse_choice(gold, letters) if isinstance(gold, str) else None
    if letter is None:
        raise ValueError(f"Cannot parse the gold answer {gold!r} as one option letter from {letters!r}.")
    return letter


# ----------------------------------------------------------------------------------------------- formats


def _same(pred: Any, gold: Any) -> bool:
    return pred == gold


def _default_from_program(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip() or None
    return _real(value)


def _default_parse_gold(gold: Any) -> Any:
    if gold is None:
        raise ValueError("The gold answer is None.")
    return gold


def _default_gold_text(gold: Any) -> str:
    return str(gold).strip()


@dataclass(frozen=True)
class AnswerFormat:
    """How answers of one kind are extracted, parsed and compared.

    Args:
        name: the registry key (``answer_format="..."`` and the dataset's ``answer_format`` column use it).
        extract: ``extract(text) -> answer | None`` for a natural-language (N-CoT) completion; ``None`` means
            nothing could be extracted (reward 0).
        parse_gold: ``parse_gold(gold) -> answer``; raise ``ValueError`` naming the value when it cannot be parsed.
        is_correct: ``is_correct(pred, gold) -> bool`` on parsed answers (default ``==``).
        from_program: ``from_program(value) -> answer | None`` for the plain value a P-CoT program returned through
            :func:`~reft_trl.sandbox.run_programs` (a float or a string; ``None`` never reaches it). The default
            keeps finite floats and stripped non-empty strings.
        gold_text: ``gold_text(gold) -> str``, how a gold that ``parse_gold`` accepts is written in the data loaders'
            ``answer`` column and in N-CoT targets (default: the stripped string).
    """

    name: str
    extract: Callable[[str], Any]
    parse_gold: Callable[[Any], Any] = _default_parse_gold
    is_correct: Callable[[Any, Any], bool] = _same
    from_program: Callable[[Any], Any] = _default_from_program
    gold_text: Callable[[Any], str] = _default_gold_text

    def with_tolerance(self, *, abs_tol: float | None = None, rel_tol: float | None = None) -> AnswerFormat:
        """A copy with other numeric tolerances, for formats comparing with :func:`numbers_close` (else ``self``)."""
        cmp = self.is_correct
        overrides = {k: v for k, v in {"abs_tol": abs_tol, "rel_tol": rel_tol}.items() if v is not None}
        if not overrides or not (isinstance(cmp, partial) and cmp.func is numbers_close):
            return self
        return replace(self, is_correct=partial(numbers_close, **{**cmp.keywords, **overrides}))


def numeric_format(
    name: str = "numeric", *, abs_tol: float = 1e-2, rel_tol: float = 0.0, trigger: str = ANSWER_TRIGGER
) -> AnswerFormat:
    """A numeric answer format (the built-in ``"numeric"`` uses the defaults). Picklable."""
    return AnswerFormat(
        name=name,
        extract=partial(_numeric_extract, trigger=trigger),
        parse_gold=_numeric_parse_gold,
        is_correct=partial(numbers_close, abs_tol=abs_tol, rel_tol=rel_tol),
        from_program=_numeric_from_program,
        gold_text=normalize_number,
    )


def multiple_choice_format(
    name: str = "multiple_choice", *, letters: str = "abcde", trigger: str = ANSWER_TRIGGER
) -> AnswerFormat:
    """A multiple-choice answer format over ``letters`` (exact, case-insensitive letter match). Picklable."""
    letters = letters.lower()
    return AnswerFormat(
        name=name,
        extract=partial(_choice_extract, trigger=trigger, letters=letters),
        parse_gold=partial(_choice_parse_gold, letters=letters),
        is_correct=_same,
        from_program=partial(_choice_from_program, letters=letters),
        gold_text=partial(_choice_parse_gold, letters=letters),
    )


_REGISTRY: dict[str, AnswerFormat] = {}


def register_answer_format(fmt: AnswerFormat, *, overwrite: bool = False) -> AnswerFormat:
    """Make ``fmt`` available by name (``answer_format=fmt.name``); returns it. Names are unique unless ``overwrite``."""
    if not isinstance(fmt, AnswerFormat):
        raise TypeError(f"register_answer_format expects an AnswerFormat, got {type(fmt).__name__}.")
    if fmt.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"An answer format named {fmt.name!r} is already registered; pass overwrite=True to replace it."
        )
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_answer_format(name: str | AnswerFormat) -> AnswerFormat:
    """The registered format called ``name`` (an :class:`AnswerFormat` is returned as is)."""
    if isinstance(name, AnswerFormat):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown answer_format {name!r}; registered formats: {sorted(_REGISTRY)}.") from None


register_answer_format(numeric_format())
register_answer_format(multiple_choice_format())
