"""Answer extraction, gold parsing, comparison and the answer-format registry (reft_trl.rewards.extractors)."""

from __future__ import annotations

import doctest
import json
import math
import pickle
import re
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import assume, given
from hypothesis import strategies as st

from reft_trl.rewards import extractors
from reft_trl.rewards.extractors import (
    ANSWER_TRIGGER,
    AnswerFormat,
    answer_line,
    get_answer_format,
    multiple_choice_format,
    numbers_close,
    numeric_format,
    parse_choice,
    parse_number,
    register_answer_format,
)

NUMERIC = get_answer_format("numeric")
CHOICE = get_answer_format("multiple_choice")


def cot(answer: str) -> str:
    return f"Some reasoning: 3 + 4 = 7.\n{ANSWER_TRIGGER} {answer}"


# ------------------------------------------------------------------------------------------ answer_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reasoning\nTherefore, the answer is: 36", " 36"),
        ("reasoning\nTherefore, the answer is:36", "36"),  # no space after the colon
        ("Therefore, the answer is: 1\nTherefore, the answer is: 2", " 2"),  # the last trigger wins
        ("Therefore, the answer is: 36</s>\nmore text 12", " 36</s>"),  # only the trigger's line counts
        ("Therefore, the answer is:\n36", ""),  # nothing on the trigger's line
        ("3 * 4 = <<3*4=12>>12\n#### 12", " 12"),  # GSM8K's native final line
        ("#### 5\nTherefore, the answer is: 6", " 6"),  # whichever marker comes last
        ("Therefore, the answer is: 6\n#### 5", " 5"),
        ("the answer is 36", None),  # no marker
        ("Therefore, the answer is 36", None),  # trigger without its colon
        ("x #### 5", None),  # #### only counts at the start of a line
    ],
)
def test_answer_line(text, expected):
    assert answer_line(text) == expected


def test_answer_line_custom_trigger_and_no_gsm8k_marker():
    assert answer_line("The final answer: 5", "The final answer:") == " 5"
    assert answer_line("#### 5", gsm8k_marker=False) is None


# ------------------------------------------------------------------------------------------ numbers

ACCEPTED_NUMBERS = [
    ("36", 36.0),
    ("36.", 36.0),
    ("36.0.", 36.0),
    ("36.5", 36.5),
    ("+5", 5.0),
    ("-5", -5.0),
    ("\u22125", -5.0),  # unicode minus sign
    ("\u20135", -5.0),  # en dash used as a minus
    ("1,000", 1000.0),
    ("1,000,000", 1_000_000.0),
    ("1,234,567.89", 1234567.89),
    ("$36", 36.0),
    ("\\$36", 36.0),
    ("-$5", -5.0),
    ("$-5", -5.0),
    ("\u20ac12.50", 12.5),
    ("36%", 36.0),  # percentages stay in percent, like GSM8K golds
    ("36 %", 36.0),
    ("36 apples", 36.0),
    ("36 apples and 2 pears", 36.0),  # only the first token counts
    ("36 or 40", 36.0),
    ("1e3", 1000.0),
    ("2.5E-1", 0.25),
    (".75", 0.75),
    ("-.5", -0.5),
    ("3/4", 0.75),
    ("-3/4", -0.75),
    ("1 1/2", 1.5),  # mixed number
    ("-2 3/4 cups", -2.75),
    ("(36)", 36.0),
    ("**36**", 36.0),
    ("\\boxed{36}", 36.0),
    ("'36'", 36.0),
    ("36</s>", 36.0),
    ("  36  ", 36.0),
    ("007", 7.0),
    ("36 - 40", 36.0),  # a spaced dash is just trailing text
]

REJECTED_NUMBERS = [
    "",
    "   ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",  # not finite
    "about 36",  # a word first
    "x = 36",
    "the answer is 36",
    "- 5",  # a dash followed by a space is a bullet, not a sign
    "1,5",  # decimal comma or a list: ambiguous
    "1,0000",  # not a thousands group
    "1,000,00",
    "1000,000",
    "1,50,000",
    "36.0.5",
    "3/4/5",
    "3/0",
    "1 7/4",  # improper "mixed number"
    "3:30",
    "36-40",  # a range
    "-$-5",  # two signs
    "$",
    ".",
    "e5",
    "twelve",
    "1\u00bd",  # 1½: unicode fractions are not supported, so not misread as 1
    "10\u00b2",  # 10²
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED_NUMBERS)
def test_parse_number_accepts(text, expected):
    assert parse_number(text) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text", REJECTED_NUMBERS)
def test_parse_number_rejects(text):
    assert parse_number(text) is None


@pytest.mark.parametrize(("text", "expected"), ACCEPTED_NUMBERS)
def test_numeric_format_extracts_after_trigger(text, expected):
    assert NUMERIC.extract(cot(text)) == pytest.approx(expected, abs=1e-12)
    assert NUMERIC.extract(cot(text) + "\nTherefore, the answer is nothing") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text", REJECTED_NUMBERS)
def test_numeric_format_rejects_after_trigger(text):
    assert NUMERIC.extract(cot(text)) is None


@pytest.mark.parametrize(
    "text",
    [
        "3 + 4 = 7",  # no trigger
        "Therefore, the answer is:\n7",  # answer not on the trigger's line
        "Therefore, the answer is: 7\nTherefore, the answer is: seven",  # the last trigger has no number
        "Therefore, the answer is 7",
    ],
)
def test_numeric_extract_nothing(text):
    assert NUMERIC.extract(text) is None


def test_parse_number_whole_requires_nothing_after():
    assert parse_number("1,000", whole=True) == 1000.0
    assert parse_number("7.0 ", whole=True) == 7.0
    assert parse_number("36%", whole=True) == 36.0
    assert parse_number("36 apples", whole=True) is None


@given(st.integers(min_value=-(10**15), max_value=10**15), st.sampled_from(["", "$", "\\$"]), st.booleans())
def test_integers_with_separators_and_currency_round_trip(n, currency, grouped):
    body = f"{abs(n):,}" if grouped else str(abs(n))
    text = ("-" if n < 0 else "") + currency + body
    assert parse_number(text) == float(n)
    assert NUMERIC.extract(cot(text + " dollars.")) == float(n)
    assert NUMERIC.parse_gold(text) == float(n)


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=2, allow_nan=False, allow_infinity=False))
def test_decimals_with_separators_round_trip(x):
    text = f"{x:,.2f}"
    assert parse_number(text) == pytest.approx(float(x), abs=1e-9)
    assert NUMERIC.is_correct(NUMERIC.extract(cot(text)), NUMERIC.parse_gold(str(x)))


@given(st.text())
def test_parse_number_never_raises_and_is_finite(text):
    value = parse_number(text)
    assert value is None or math.isfinite(value)


@given(st.integers(-10_000, 10_000), st.text())
def test_later_lines_do_not_change_the_answer(n, suffix):
    assume(ANSWER_TRIGGER not in suffix and "####" not in suffix)
    assert NUMERIC.extract(cot(str(n)) + "\n" + suffix) == n


# ------------------------------------------------------------------------------------------ gold parsing


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("1,000", 1000.0),
        ("7.0", 7.0),
        (" 18 ", 18.0),
        ("-3", -3.0),
        ("$5", 5.0),
        ("0.5", 0.5),
        ("3/4", 0.75),
        (18, 18.0),
        (7.5, 7.5),
        (np.int64(4), 4.0),
        (np.float32(0.5), 0.5),
        (Fraction(1, 4), 0.25),
        (Decimal("2.50"), 2.5),
        (sympy.Rational(3, 2), 1.5),
        ("He sold 3 + 4 = 7 apples.\n#### 7", 7.0),  # a whole GSM8K rationale
    ],
)
def test_numeric_gold_cleaning(gold, expected):
    assert NUMERIC.parse_gold(gold) == expected


@pytest.mark.parametrize("gold", ["", "seven", "nan", "inf", "1,5", "36 apples", None, True, float("nan"), [1]])
def test_numeric_gold_error_names_the_value(gold):
    with pytest.raises(ValueError, match=re.escape(repr(gold))):
        NUMERIC.parse_gold(gold)


@pytest.mark.parametrize(("gold", "expected"), [("a", "a"), ("C", "c"), (" e ", "e"), ("(b)", "b"), ("d )", "d")])
def test_choice_gold_cleaning(gold, expected):
    assert CHOICE.parse_gold(gold) == expected


@pytest.mark.parametrize("gold", ["f", "", "a or b", "38", None, 1])
def test_choice_gold_error_names_the_value(gold):
    with pytest.raises(ValueError, match=re.escape(repr(gold))):
        CHOICE.parse_gold(gold)


# ------------------------------------------------------------------------------------------ comparison


def test_numeric_comparison_default_absolute_tolerance():
    assert NUMERIC.is_correct(7.0, 7.0)
    assert NUMERIC.is_correct(7.009, 7.0)
    assert NUMERIC.is_correct(6.991, 7.0)
    assert not NUMERIC.is_correct(7.02, 7.0)
    assert not NUMERIC.is_correct(1_000_001.0, 1_000_000.0)  # absolute, not relative, by default


def test_relative_tolerance():
    rel = numeric_format(rel_tol=1e-4)
    assert rel.is_correct(1_000_050.0, 1_000_000.0)
    assert not rel.is_correct(1_000_200.0, 1_000_000.0)
    assert rel.is_correct(7.005, 7.0)  # the absolute tolerance still applies
    assert numbers_close(100.0, 101.0, abs_tol=0.0, rel_tol=0.01)
    assert not numbers_close(100.0, 101.5, abs_tol=0.0, rel_tol=0.01)


def test_with_tolerance_only_changes_numeric_comparisons():
    strict = NUMERIC.with_tolerance(abs_tol=1e-6)
    assert not strict.is_correct(7.001, 7.0)
    assert NUMERIC.is_correct(7.001, 7.0)  # the registered format is unchanged
    loose = NUMERIC.with_tolerance(rel_tol=0.1)
    assert loose.is_correct(105.0, 100.0)
    assert not loose.is_correct(0.5, 0.0)  # abs_tol kept at 1e-2
    assert CHOICE.with_tolerance(rel_tol=0.5) is CHOICE
    assert NUMERIC.with_tolerance() is NUMERIC


def test_choice_comparison_is_exact():
    assert CHOICE.is_correct("c", "c")
    assert not CHOICE.is_correct("c", "d")


# ------------------------------------------------------------------------------------------ multiple choice

ACCEPTED_CHOICES = [
    ("c", "c"),
    ("C", "c"),
    ("'c'", "c"),
    ('"c"', "c"),
    ("(A)", "a"),
    ("[b]", "b"),
    ("a )", "a"),
    ("a)", "a"),
    ("A.", "a"),
    ("e:", "e"),
    ("**b**", "b"),
    ("c ) 38", "c"),
    ("b ) 27.675", "b"),
    ("d ) data inadequate", "d"),
    ("option c", "c"),
    ("Option (C)", "c"),
    ("c</s>", "c"),
    ("  c  ", "c"),
    ("c c", "c"),  # the same letter twice is still one answer
]

REJECTED_CHOICES = [
    "",
    "a or b",  # hedging: reward hacking
    "a, c",
    "a,c",
    "a/b",
    "a and c",
    "A or B",
    "(a) or (b)",
    "a ) 38 , b ) 27.675",
    "c because a is too small",  # conservative: any second option letter
    "f",  # not an option
    "38",
    "the answer",
    "ab",
    "none",
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED_CHOICES)
def test_parse_choice_accepts(text, expected):
    assert parse_choice(text) == expected
    assert CHOICE.extract(cot(text)) == expected


@pytest.mark.parametrize("text", REJECTED_CHOICES)
def test_parse_choice_rejects(text):
    assert parse_choice(text) is None
    assert CHOICE.extract(cot(text)) is None


def test_choice_needs_the_trigger():
    assert CHOICE.extract("The answer is c") is None
    assert CHOICE.extract("c") is None
    assert CHOICE.extract("Therefore, the answer is:\nc") is None


@given(
    st.sampled_from("abcde"),
    st.sampled_from("abcde"),
    st.sampled_from([" or ", ", ", "/", " and ", " / ", " & "]),
    st.booleans(),
)
def test_two_different_letters_never_extract(a, b, sep, upper):
    assume(a != b)
    text = f"{a}{sep}{b}"
    assert CHOICE.extract(cot(text.upper() if upper else text)) is None


@given(st.text())
def test_parse_choice_never_raises(text):
    assert parse_choice(text) in {None, "a", "b", "c", "d", "e"}


def test_custom_letters():
    fmt = multiple_choice_format("abcd_choice", letters="ABCD")
    assert fmt.extract(cot("D")) == "d"
    assert fmt.extract(cot("e")) is None
    with pytest.raises(ValueError, match="'e'"):
        fmt.parse_gold("e")


# ------------------------------------------------------------------------------------------ program values


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7.0, 7.0), (7, 7.0), ("1,000", 1000.0), ("$36", 36.0), (" 3/4 ", 0.75), (float("nan"), None)]
    + [(float("inf"), None), ("nan", None), ("seven", None), ("", None), (True, None)],
)
def test_numeric_from_program(value, expected):
    assert NUMERIC.from_program(value) == expected


@pytest.mark.parametrize(("value", "expected"), [("c", "c"), ("C", "c"), ("(b)", "b"), ("a or b", None), (3.0, None)])
def test_choice_from_program(value, expected):
    assert CHOICE.from_program(value) == expected


# ------------------------------------------------------------------------------------------ registry


@pytest.fixture
def registry(monkeypatch):
    """Register formats into a copy of the registry, dropped after the test."""
    monkeypatch.setattr(extractors, "_REGISTRY", dict(extractors._REGISTRY))


def test_builtin_formats_are_registered():
    assert get_answer_format("numeric").name == "numeric"
    assert get_answer_format("multiple_choice").name == "multiple_choice"
    assert get_answer_format(NUMERIC) is NUMERIC


def test_unknown_format_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"'latex'.*'multiple_choice', 'numeric'"):
        get_answer_format("latex")


def test_register_and_overwrite(registry):
    fmt = AnswerFormat(name="upper", extract=lambda text: text.strip().upper() or None)
    assert register_answer_format(fmt) is fmt
    assert get_answer_format("upper").extract(" ab ") == "AB"
    with pytest.raises(ValueError, match="'upper' is already registered"):
        register_answer_format(AnswerFormat(name="upper", extract=str.lower))
    register_answer_format(AnswerFormat(name="upper", extract=str.lower), overwrite=True)
    assert get_answer_format("upper").extract("AB") == "ab"
    with pytest.raises(TypeError, match="AnswerFormat"):
        register_answer_format("upper")


def test_answer_format_defaults():
    fmt = AnswerFormat(name="plain", extract=str.strip)
    assert fmt.parse_gold("x") == "x"
    assert fmt.is_correct("x", "x") and not fmt.is_correct("x", "y")
    assert fmt.from_program(" x ") == "x"
    assert fmt.from_program("  ") is None
    assert fmt.from_program(2.5) == 2.5
    assert fmt.from_program(float("nan")) is None
    with pytest.raises(ValueError, match="None"):
        fmt.parse_gold(None)


def test_builtin_formats_pickle():
    for fmt in (NUMERIC, CHOICE, numeric_format("rel", rel_tol=1e-3)):
        copy = pickle.loads(pickle.dumps(fmt))
        assert copy.extract(cot("c ) 1,000")) == fmt.extract(cot("c ) 1,000"))
        assert copy.is_correct(1000.05, 1000.0) == fmt.is_correct(1000.05, 1000.0)


def test_boxed_example_in_the_module_docstring(registry):
    """The documented user format (``\\boxed{}``) registers and scores end to end; the doctest is the example."""
    results = doctest.testmod(extractors, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 5 and results.failed == 0
    fmt = get_answer_format("boxed")
    assert fmt.extract("so \\boxed{\\frac{1}{2}} and later \\boxed{ x + 1 }.") == "x+1"  # the last box
    assert fmt.extract("\\boxed{unbalanced") is None
    assert fmt.extract("no box") is None


# ------------------------------------------------------------------------------------------ real data


def _gsm8k_rows(shared_data):
    path = shared_data / "gsm8k" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with path.open() as f:
        return [json.loads(line) for line in f]


def test_gsm8k_train_rationales_extract_their_gold(shared_data):
    rows = _gsm8k_rows(shared_data)
    assert len(rows) == 7473
    failures = []
    for row in rows:
        rationale, gold = row["answer"], row["answer"].rsplit("####", 1)[1].strip()
        triggered = re.sub(r"\n#### ([^\n]*)$", rf"\n{ANSWER_TRIGGER} \1", rationale)
        assert triggered != rationale
        expected = NUMERIC.parse_gold(gold)
        for text in (triggered, rationale):  # the trigger form and GSM8K's native `#### x` line
            pred = NUMERIC.extract(text)
            if pred is None or not NUMERIC.is_correct(pred, expected):
                failures.append((text[-60:], gold, pred))
    assert not failures, failures[:5]
