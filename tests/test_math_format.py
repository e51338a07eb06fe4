r"""The "math" answer format (LaTeX answers graded by math-verify) and the MATH loader.

Extraction tests need nothing; grading and loading need the optional ``math-verify`` (``pip install reft-trl[math]``,
part of ``make install``) and are skipped without it.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reft_trl.data import DataValidationError, load_math, load_stats
from reft_trl.data.args import DataArguments
from reft_trl.rewards import (
    AnswerReward,
    extract_math_answer,
    get_answer_format,
    grade_completions,
    last_boxed,
    math_format,
    math_gold_text,
    score_completion,
    score_completions,
)

SRC = Path(__file__).parents[1] / "src"


def needs_math_verify():
    pytest.importorskip("math_verify", reason="the 'math' format needs math-verify: pip install reft-trl[math]")


# ------------------------------------------------------------------------------------------ extraction (pure)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),  # nested braces
        (r"\boxed{1} then \boxed{ x^{2} + 1 }", r"x^{2} + 1"),  # the last box, stripped
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not count
        (r"\fbox{7}", "7"),
        (r"hence \boxed 5 and done", "5"),  # one bare token
        (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        ("Therefore, the answer is: $\\frac{1}{2}$.\n</s>", r"\frac{1}{2}"),  # the N-CoT trigger line
        (r"\boxed{3}. Therefore, the answer is: 4", "4"),  # the trigger comes last
        ("Therefore, the answer is: 4. So \\boxed{3}", "3"),  # the box comes last
        (r"\boxed{3} and then \boxed{unbalanced", None),  # the last box is unbalanced: nothing
        (r"\boxed{}", None),
        (r"\boxed{ $ $ }", None),
        ("Therefore, the answer is:\n5", None),  # nothing on the trigger's line
        (r"\boxedx{3}", None),  # another command
        ("no answer here", None),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


def test_last_boxed_and_gold_text():
    assert last_boxed(r"a \boxed{1} b \boxed{\frac{1}{2}} c") == r"\frac{1}{2}"
    assert last_boxed("none") is None
    solution = r"Since $x=2$, the area is $\boxed{\dfrac{1}{2}}$."
    assert math_gold_text(solution) == r"\dfrac{1}{2}"  # a whole MATH solution: its last box
    assert math_gold_text(" $0.5$ ") == "0.5"
    assert math_gold_text(3) == "3"
    for bad in (r"so \boxed{1", r"\boxed{}", " $ $ ", None, True):
        with pytest.raises(ValueError):
            math_gold_text(bad)


def test_importing_rewards_needs_neither_math_verify_nor_torch_and_the_format_names_the_extra():
    """Without math-verify, ``import reft_trl.rewards`` works (and imports no torch); grading with "math" raises an
    ImportError naming ``pip install reft-trl[math]``; the other formats still work."""
    code = (
        "import sys; sys.modules['math_verify'] = None\n"  # as if it were not installed
        "import reft_trl.rewards as r\n"
        "assert 'torch' not in sys.modules and 'math_verify' not in [m for m in sys.modules if sys.modules[m]]\n"
        "assert r.get_answer_format('math').name == 'math'\n"
        "assert r.score_completion('Therefore, the answer is: 7', '7') == 1.0\n"
        "try:\n"
        "    r.score_completion('\\\\boxed{1}', '1', answer_format='math')\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "IMPORTERROR" in out.stdout and 'pip install "reft-trl[math]"' in out.stdout


# ------------------------------------------------------------------------------------------ grading

EQUIVALENT = [
    (r"\frac12", r"\frac{1}{2}"),
    (r"\dfrac{1}{2}", "0.5"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"\frac{\sqrt3}{2}", r"\frac{\sqrt{3}}{2}"),
    ("[1, 3)", "[1,3)"),
    (r"(-\infty, 3]", r"(-\infty,3]"),
    (r"\{2, 1\}", r"\{1,2\}"),
    ("x=3", "3"),
    ("3", "x=3"),
    (r"30^\circ", "30"),
    (r"50\%", "0.5"),
    (r"(x+1)^2", r"x^2+2x+1"),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"\text{(C)}", "C"),
]
NOT_EQUIVALENT = [
    (r"\frac13", r"\frac{1}{2}"),
    ("0.33", r"\frac{1}{3}"),  # compared to 6 decimals
    ("(1,3)", "[1,3)"),  # open vs half-open interval
    (r"\{1,2,3\}", r"\{1,2\}"),
    (r"\sqrt{2}", "2"),
    ("x=4", "3"),
]


def test_equivalent_latex_scores_1():
    needs_math_verify()
    completions = [f"We find $\\boxed{{{pred}}}$." for pred, _ in EQUIVALENT]
    assert score_completions(completions, [g for _, g in EQUIVALENT], answer_format="math") == [1.0] * len(EQUIVALENT)


def test_wrong_but_parsed_scores_the_partial_reward():
    needs_math_verify()
    completions = [f"\\boxed{{{pred}}}" for pred, _ in NOT_EQUIVALENT]
    golds = [g for _, g in NOT_EQUIVALENT]
    assert score_completions(completions, golds, answer_format="math") == [0.1] * len(NOT_EQUIVALENT)
    assert score_completions(completions, golds, answer_format="math", partial_reward=0.3) == [0.3] * len(golds)


def test_nothing_parsed_scores_0():
    needs_math_verify()
    completions = [
        "I do not know.",
        r"\boxed{}",
        r"\boxed{\frac{1}{2}",  # unbalanced
        r"\boxed{?}",  # math-verify finds no math (only its fallback text)
        r"\boxed{\text{}}",
        "\\boxed{" + "1+" * 600 + "1}",  # longer than max_chars (1,000)
        "Therefore, the answer is:",
    ]
    outcomes = grade_completions(completions, [r"\frac12"] * len(completions), answer_format="math")
    assert [(o.status, o.reward, o.answer) for o in outcomes] == [("unparsable", 0.0, None)] * len(completions)


def test_outcomes_hold_the_extracted_latex_and_a_whole_solution_is_a_gold():
    needs_math_verify()
    solution = r"The two roots sum to $\boxed{\frac{\sqrt{3}}{2}}$."
    [right, wrong] = grade_completions(
        [r"so \boxed{\frac{\sqrt3}{2}}", r"Therefore, the answer is: $\frac{1}{2}$."],
        [solution, solution],
        answer_format="math",
    )
    assert (right.answer, right.status) == (r"\frac{\sqrt3}{2}", "correct")
    assert (wrong.answer, wrong.status, wrong.reward) == (r"\frac{1}{2}", "wrong", 0.1)


def test_a_gold_math_verify_cannot_parse_is_refused():
    needs_math_verify()
    with pytest.raises(ValueError, match=r"Gold answer of item 1: .*'\?'"):
        score_completions([r"\boxed{1}"] * 2, ["1", "?"], answer_format="math")
    with pytest.raises(ValueError, match="unbalanced"):
        get_answer_format("math").parse_gold(r"so \boxed{1")


def test_scoring_from_a_thread_gives_the_same_results_and_keeps_the_callers_alarm():
    """math-verify's signal.alarm timeouts raise outside the main thread and cancel the caller's alarm: the worker
    process avoids both."""
    needs_math_verify()
    completions = [f"\\boxed{{{p}}}" for p, _ in EQUIVALENT + NOT_EQUIVALENT] + ["none"]
    golds = [g for _, g in EQUIVALENT + NOT_EQUIVALENT] + ["1"]
    expected = [1.0] * len(EQUIVALENT) + [0.1] * len(NOT_EQUIVALENT) + [0.0]
    results, errors = [], []

    def score():
        try:
            results.append(score_completions(completions, golds, answer_format="math"))
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)

    threads = [threading.Thread(target=score) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [expected] * 3

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 300)
    try:
        assert score_completions(completions, golds, answer_format="math") == expected
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 200  # still pending: nothing reset it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_hostile_latex_is_bounded_in_time_and_the_worker_recovers():
    needs_math_verify()
    hostile = r"\boxed{9^{9^{9^{9}}}}"  # parses at once; comparing it to 3 would run forever
    fmt = math_format("math-2s", timeout=2.0)  # math-verify's own limit inside the worker: 2 / 4 -> 1 s
    start = time.monotonic()
    assert score_completion(hostile, "3", answer_format=fmt) == 0.1  # parsed, comparison timed out: wrong
    assert time.monotonic() - start < 10

    killed = math_format("math-kill", timeout=0.5)  # shorter than the worker's 1 s minimum: the parent kills it
    start = time.monotonic()
    assert score_completion(hostile, "3", answer_format=killed) == 0.1
    assert time.monotonic() - start < 10
    assert score_completion(r"\boxed{\frac12}", "0.5", answer_format="math") == 1.0  # a fresh worker
    with pytest.raises(ValueError, match="timeout"):
        math_format("bad", timeout=0)


def test_the_worker_dies_with_its_parent_even_while_busy(tmp_path):
    """A process that grades is SIGKILLed while its math-verify worker is deep in a hostile comparison: the worker
    exits within about a second (it watches its parent), instead of computing on for math-verify's 100 s."""
    needs_math_verify()
    import os

    code = (
        "import sys\n"
        "from reft_trl.rewards.math_answers import _VERIFIER\n"
        "_VERIFIER.ask({'op': 'parse', 's': '1'}, 60)\n"
        "print(_VERIFIER._proc.pid, flush=True)\n"
        "_VERIFIER.ask({'op': 'verify', 'g': '9^{9^{9^{9}}}', 'p': '3'}, 400)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(1.0)  # the worker is now comparing
        os.kill(worker, 0)  # alive
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _running(worker):
            time.sleep(0.1)
        if _running(worker):
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the math-verify worker outlived the process that started it")
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead process its new parent has not reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def test_a_worker_killed_with_the_thread_that_started_it_is_restarted():
    """The kernel kills the worker when the thread that started it exits (PR_SET_PDEATHSIG); the next request, from
    another thread, starts a fresh one and gets its answer (not a time-out's 'wrong')."""
    needs_math_verify()
    from reft_trl.rewards.math_answers import _VERIFIER

    _VERIFIER.close()
    results = []
    thread = threading.Thread(
        target=lambda: results.append(score_completion(r"\boxed{\frac12}", "0.5", answer_format="math"))
    )
    thread.start()
    thread.join()
    first = _VERIFIER._proc.pid
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(first):
        time.sleep(0.05)
    assert not _running(first)
    assert results == [1.0]
    assert score_completion(r"\boxed{\dfrac{1}{2}}", "0.5", answer_format="math") == 1.0
    assert _VERIFIER._proc.pid != first


@pytest.mark.parametrize(
    ("value", "gold", "answer"),
    [
        (0.5, r"\frac12", "0.5"),
        (3.0, "3", "3"),
        (0.3333333333, r"\frac{1}{3}", "0.3333333333"),
        (r"\frac{1}{2}", "0.5", r"\frac{1}{2}"),
        (" $2\\sqrt{2}$ ", r"\sqrt{8}", r"2\sqrt{2}"),
    ],
)
def test_from_program_values_are_compared_by_math_verify(value, gold, answer):
    needs_math_verify()
    fmt = get_answer_format("math")
    got = fmt.from_program(value)
    assert got == answer
    assert fmt.is_correct(got, fmt.parse_gold(gold))


def test_from_program_refuses_non_answers():
    needs_math_verify()
    fmt = get_answer_format("math")
    for value in (float("nan"), float("inf"), True, "", "?", [1]):
        assert fmt.from_program(value) is None


def test_p_cot_programs_are_scored_through_the_sandbox():
    needs_math_verify()
    programs = [
        'def solution():\n    """q"""\n    return 1 / 2\n',
        'def solution():\n    """q"""\n    return "\\\\frac{1}{3}"\n',
        'def solution():\n    """q"""\n    raise ValueError\n',
    ]
    assert score_completions(programs, [r"\frac12"] * 3, answer_format="math", cot="python") == [1.0, 0.1, 0.0]


def test_the_format_pickles():
    needs_math_verify()
    fmt = pickle.loads(pickle.dumps(get_answer_format("math")))
    assert fmt.extract(r"\boxed{\frac12}") == r"\frac12"
    assert fmt.is_correct(r"\frac12", "0.5")


# ------------------------------------------------------------------------------------------ the MATH loader

ROWS = [
    {
        "problem": "What is $1/2$ as a decimal?",
        "solution": r"Dividing, $\frac{1}{2} = \boxed{0.5}$.",
        "level": "Level 1",
        "type": "Prealgebra",
    },
    {
        "problem": r"Compute $\cos 30^\circ$.",
        "solution": r"It is $\boxed{\frac{\sqrt{3}}{2}}$.",
        "level": "Level 2",
        "type": "Precalculus",
    },
    {"problem": "Solve $x+1=4$.", "solution": r"So $x = \boxed{3}$.", "level": "Level 1", "type": "Algebra"},
]
BAD = {"problem": "No answer.", "solution": "We are done, the answer is 3.", "level": "Level 1", "type": "Algebra"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_math_sft_rows_keep_the_solution_as_written(tmp_path):
    needs_math_verify()
    ds = load_math(write_jsonl(tmp_path / "math.jsonl", ROWS), kind="sft")
    rows = ds.to_list()
    assert [r["answer"] for r in rows] == ["0.5", r"\frac{\sqrt{3}}{2}", "3"]  # extracted by the format
    assert rows[0]["prompt"] == "Question:\nWhat is $1/2$ as a decimal?\nAnswer reasoning:\n"
    assert rows[0]["completion"] == ROWS[0]["solution"]  # as written: no "Therefore, the answer is:" line
    assert {(r["answer_format"], r["cot"]) for r in rows} == {("math", "nl")}
    assert [r["item_id"] for r in rows] == ["math_0", "math_1", "math_2"]
    assert [(r["level"], r["type"]) for r in rows][1] == ("Level 2", "Precalculus")  # extra fields carried
    assert load_stats(ds).flagged == {}


def test_load_math_rl_rows_are_scored_by_answer_reward(tmp_path):
    needs_math_verify()
    ds = load_math(write_jsonl(tmp_path / "math.jsonl", ROWS), kind="rl")
    reward = AnswerReward()  # the rows' answer_format column says "math"
    assert reward.validate_rows(ds) == []
    columns = {k: ds[k] for k in ds.column_names if k != "prompt"}
    completions = [r"so \boxed{\frac12}", r"\boxed{\frac{\sqrt3}{2}}", "Therefore, the answer is: 4"]
    assert reward(ds["prompt"], completions, **columns) == [1.0, 1.0, 0.1]
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert reward(ds["prompt"], chat, **columns) == [1.0, 1.0, 0.1]


def test_a_row_without_a_boxed_answer_names_the_file_row_field_and_value(tmp_path):
    needs_math_verify()
    path = write_jsonl(tmp_path / "mine.jsonl", [*ROWS, BAD])
    with pytest.raises(DataValidationError) as info:
        load_math(path, kind="rl")
    err = info.value
    assert (err.dataset, err.source, err.item_id, err.field) == ("math", "mine.jsonl", "math_3", "solution")
    assert "the answer is 3." in str(err) and r"no \boxed{} answer" in str(err)
    ds, stats = load_math(path, kind="rl", on_invalid="skip", return_stats=True)
    assert len(ds) == 3 and stats.rows_read == 4 and list(stats.skipped.values()) == [["math_3"]]


def test_an_answer_field_is_the_gold_and_a_disagreeing_solution_is_flagged(tmp_path):
    """MATH-500 rows carry ``answer`` and ``unique_id``: the answer is the gold, the id the item id."""
    needs_math_verify()
    rows = [
        {**ROWS[0], "answer": r"\frac{1}{2}", "unique_id": "test/prealgebra/1.json"},
        {**ROWS[2], "answer": "4", "unique_id": "test/algebra/2.json"},  # the solution boxes 3
        {**BAD, "answer": "3", "unique_id": "test/algebra/3.json"},  # no box, but an answer: usable for RL
    ]
    ds, stats = load_math(write_jsonl(tmp_path / "m500.jsonl", rows), kind="sft", return_stats=True)
    assert ds["answer"] == [r"\frac{1}{2}", "4", "3"]
    assert ds["item_id"] == ["test/prealgebra/1.json", "test/algebra/2.json", "test/algebra/3.json"]
    assert stats.flagged == {"stated_answer_mismatch": ["test/algebra/2.json", "test/algebra/3.json"]}
    with pytest.raises(DataValidationError, match=r"row test/algebra/9.json, field 'answer'.*'\?'"):
        load_math(
            write_jsonl(tmp_path / "bad.jsonl", [{**ROWS[0], "answer": "?", "unique_id": "test/algebra/9.json"}])
        )


def test_load_math_folders_and_data_arguments(tmp_path):
    needs_math_verify()
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", ROWS[:2])
    args = DataArguments(dataset="math", data_path=str(tmp_path), eval_split="test")
    assert len(args.train_dataset("sft")) == 3 and args.eval_dataset()["answer_format"] == ["math", "math"]

    original = tmp_path / "MATH"  # the original release: {split}/<subject>/<n>.json, one problem each
    for i, row in enumerate(ROWS):
        folder = original / "train" / row["type"].lower()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.json").write_text(json.dumps(row))
    ds = load_math(original, "train", kind="rl")
    assert sorted(ds["item_id"]) == ["algebra/2", "prealgebra/0", "precalculus/1"]
    with pytest.raises(ValueError, match="no P-CoT programs"):
        load_math(original, "train", kind="sft", cot="python")
    assert load_math(original, "train", kind="rl", cot="python")[0]["completion_prefix"].startswith("def solution")


def test_the_module_doctests_run():
    import doctest

    from reft_trl.rewards import math_answers

    results = doctest.testmod(math_answers)
    assert results.attempted >= 2 and results.failed == 0


def test_the_worker_does_not_remember_results_that_timed_out():
    """math-verify returns [] / False on a timeout as on a plain failure, and only logs the timeout: the worker's
    cache must not keep such a result (a busy moment would make an answer unparsable for the worker's life)."""
    import importlib.util
    import logging

    from reft_trl.rewards import math_answers

    spec = importlib.util.spec_from_file_location("math_worker_under_test", math_answers._WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    flag = worker._TimeoutFlag()
    log = logging.getLogger("math_verify.under_test")
    log.addHandler(flag)
    calls = []

    def parsed(latex):
        calls.append(latex)
        if len(calls) == 1:
            log.warning(f"Timeout during parsing: {latex}")
            return []
        return ["parsed"]

    try:
        cache = worker._Cache(flag, size=2)
        assert cache(parsed, "x") == []  # timed out: not remembered
        assert cache(parsed, "x") == ["parsed"]  # computed again
        assert cache(parsed, "x") == ["parsed"] and len(calls) == 2  # remembered now
        cache(parsed, "y")
        cache(parsed, "z")  # full: emptied, then z kept
        assert len(cache.results) == 1
    finally:
        log.removeHandler(flag)
