r"""The ``"math"`` answer format: LaTeX answers (MATH-style ``\boxed{}``) compared by Hugging Face ``math-verify``.

Optional: ``pip install "reft-trl[math]"`` installs ``math-verify`` (the checker TRL's ``trl.rewards.accuracy_reward``
uses). The format is registered whether or not it is installed; grading with it, or loading MATH rows (their golds
are validated by the format's ``parse_gold``), raises an ``ImportError`` naming that command when it is not.

Extraction (:func:`extract_math_answer`, pure Python): the content of the LAST ``\boxed{...}`` (or ``\fbox{...}``,
nested braces balanced; ``\boxed 5`` without braces takes one token), or the rest of the line after the last N-CoT
trigger ``Therefore, the answer is:`` (the other formats' answer line), whichever comes last in the completion.
Surrounding ``$``/``\(``/``\[`` and a final full stop are dropped. An unbalanced last ``\boxed{``, an empty box, a
trigger with nothing on its line, or an answer longer than ``max_chars`` (1,000) extracts nothing.

Grading keeps the ReFT three-way reward (:mod:`reft_trl.rewards.scoring`): ``1.0`` when math-verify finds the answer
equivalent to the gold (``\frac12`` = ``\dfrac{1}{2}`` = ``0.5``, ``2\sqrt{2}`` = ``\sqrt{8}``, ``[1,3)``, sets in
any order, ``x=3`` = ``3``, ``30^\circ`` = ``30``, ``50\%`` = ``0.5``, matrices, ``(x+1)^2`` = ``x^2+2x+1``), the
``partial_reward`` (0.1) when an answer was extracted and math-verify parses it into a math object but it is not
equivalent, ``0.0`` when nothing was extracted or math-verify parses no math from it (``\boxed{?}``; the matched text
alone, which math-verify falls back to, does not count). (TRL's ``accuracy_reward`` gives 0 to both of the last
two.)

Golds (:func:`math_gold_text`): a LaTeX answer string (``"\frac{1}{2}"``, ``"$0.5$"``) or a whole MATH ``solution``,
whose last ``\boxed{}`` is the answer; ``parse_gold`` refuses (``ValueError``) a gold math-verify parses no math from
(the loaders then raise a ``DataValidationError``, or drop the row with ``on_invalid="skip"``).

P-CoT (``cot="python"``): the value ``solution()`` returns through the sandbox is converted to text math-verify
reads: a finite float is written as an integer when it is one (``3.0`` -> ``"3"``) and with ``repr`` otherwise
(``0.5``; math-verify compares numbers rounded to 6 decimals, so ``0.3333333`` matches ``\frac{1}{3}``), a string is
read as LaTeX or a plain expression (``"sqrt(8)"``, ``"\\frac{1}{2}"``). Symbolic results must be returned as
strings: the sandbox returns only floats and strings.

Time bound. math-verify limits its own work with ``signal.alarm``, which only works in the main thread (elsewhere
it raises ``ValueError``, and without a timeout ``\boxed{9^{9^{9^{9}}}}`` is compared forever), cancels any alarm the
caller had set (e.g. pytest-timeout's), and cannot interrupt one long C-level call (a Python signal handler only runs
between bytecodes). So math-verify never runs in the caller's process: a dedicated
worker process (``_math_worker.py``, started on first use, one per process that grades, thread-safe and fork-aware)
parses and compares, with math-verify's own limits of ``timeout / 4`` seconds per step, and every request has a
wall-clock deadline of ``timeout`` seconds (default 10) after which the worker is killed (and restarted on the next
request). The worker never outlives its starter: the kernel kills it when the thread that started it exits
(``PR_SET_PDEATHSIG``; an idle worker also exits at EOF), and a worker that died with a short-lived thread is
restarted and asked again (a restart imports math-verify again, seconds: grade from a long-lived thread). Results
are cached in the worker, except those during which math-verify timed out. An answer whose parsing times out counts as nothing extracted (0), a comparison that times out as wrong
(``partial_reward``), a gold that times out is refused (``ValueError``). This works the same from any thread.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from reft_trl.rewards.extractors import ANSWER_TRIGGER, AnswerFormat, answer_line, register_answer_format

__all__ = ["INSTALL_HINT", "extract_math_answer", "last_boxed", "math_format", "math_gold_text"]

INSTALL_HINT = 'pip install "reft-trl[math]"'
DEFAULT_TIMEOUT = 10.0
"""Seconds: the wall-clock bound on parsing one answer or comparing one pair."""
MAX_ANSWER_CHARS = 1000
"""Longer extracted answers (or golds) are not sent to math-verify: nothing extracted (or a refused gold)."""
STARTUP_TIMEOUT = 120.0
"""Seconds the worker may take to import math-verify (sympy, antlr) on a busy machine."""

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_WORKER = Path(__file__).with_name("_math_worker.py")


# ----------------------------------------------------------------------------------------------- extraction


def _boxed_at(text: str, match: re.Match) -> str | None:
    """The argument of the box command ``match`` found: a balanced ``{...}`` group, or one bare token."""
    i = match.end()
    if i >= len(text):
        return None
    if text[i] != "{":
        token = re.match(r"[^\s${}]+", text[i:])  # \boxed 5
        return token.group(0) if token and match.group(0)[-1:].isspace() else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and text[j - 1] != "\\":
            depth += 1
        elif text[j] == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: nothing


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}``/``\fbox{...}`` in ``text`` (nested braces balanced), stripped;
    ``None`` if there is none, the last one is unbalanced, or it is empty.

    >>> last_boxed(r"so \boxed{1} and finally $\boxed{\frac{\sqrt{3}}{2}}$.")
    '\\frac{\\sqrt{3}}{2}'
    """
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    content = _boxed_at(text, matches[-1])
    return content.strip() or None if content is not None else None


def _clean(answer: str) -> str:
    """Strip whitespace, one pair of math delimiters (``$..$``, ``$$..$$``, ``\\(..\\)``, ``\\[..\\]``) and a
    final full stop."""
    answer = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            answer = answer[len(left) : len(answer) - len(right)].strip()
            break
    return answer.rstrip(".").strip()


def extract_math_answer(text: str, trigger: str = ANSWER_TRIGGER) -> str | None:
    r"""The answer text of a completion, without math-verify: the last ``\boxed{}``'s content or the last trigger
    line's rest, whichever comes last; ``None`` if neither gives a non-empty answer.

    >>> extract_math_answer(r"... $\boxed{3}$. Therefore, the answer is: $\frac{1}{2}$.")
    '\\frac{1}{2}'
    """
    boxes = list(_BOX.finditer(text))
    box_at = boxes[-1].start() if boxes else -1
    trigger_at = text.rfind(trigger)
    if trigger_at > box_at:
        line = answer_line(text, trigger, gsm8k_marker=False)
        answer = _clean(line) if line is not None else ""
        return answer or None
    if box_at < 0:
        return None
    answer = last_boxed(text)
    return _clean(answer) or None if answer is not None else None


def math_gold_text(gold: Any) -> str:
    r"""A gold as the ``answer`` column stores it: the last ``\boxed{}`` of a MATH solution, else the whole gold
    (a LaTeX answer, or a number), without math delimiters. Raises ``ValueError`` when nothing is left, or when the
    gold has a ``\boxed`` that is unbalanced or empty."""
    if gold is None or isinstance(gold, bool):
        raise ValueError(f"Cannot use {gold!r} as a gold answer (math answer format).")
    text = str(gold)
    if _BOX.search(text):
        boxed = last_boxed(text)
        if boxed is None:
            raise ValueError(
                f"The gold's last \\boxed{{}} is empty or unbalanced: {text[-80:]!r} (math answer format)."
            )
        text = boxed
    text = _clean(text)
    if not text:
        raise ValueError(f"The gold answer {gold!r} is empty (math answer format).")
    return text


# ----------------------------------------------------------------------------------------------- the worker


class _WorkerDied(Exception):
    """The worker's stdout closed: it exited or was killed."""


class _Verifier:
    """The client of one ``_math_worker.py`` process: started lazily, restarted after a timeout or a crash, replaced
    in a forked child. Thread-safe (one request at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = -1
        self._buffer = b""

    def _forget(self) -> None:
        self._proc, self._pid, self._buffer = None, -1, b""  # in a forked child: the parent's worker stays its own

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._forget()

    def _readline(self, deadline: float) -> bytes | None:
        """The worker's next line; ``None`` at the deadline; :class:`_WorkerDied` if it died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _start(self) -> None:
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError(f"The 'math' answer format needs math-verify, which is not installed: {INSTALL_HINT}")
        self._proc = subprocess.Popen(
            [sys.executable, str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            env={**os.environ, "REFT_MATH_WORKER_PARENT": str(os.getpid())},
        )
        self._pid, self._buffer = os.getpid(), b""
        try:
            line = self._readline(time.monotonic() + STARTUP_TIMEOUT)
        except _WorkerDied:
            line = None
        hello = json.loads(line) if line else {}
        if "error" in hello:
            self.close()
            raise ImportError(f"The 'math' answer format cannot import math-verify ({hello['error']}): {INSTALL_HINT}")
        if not hello.get("ready"):
            self.close()
            raise RuntimeError(f"the math-verify worker ({_WORKER}) did not start within {STARTUP_TIMEOUT:.0f} s")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and self._pid == os.getpid():
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):  # a dead worker's pipe: the unsent request is moot
                    stream.close()

    def ask(self, request: dict[str, Any], timeout: float) -> bool | None:
        """The worker's answer, or ``None`` when it did not come within ``timeout`` seconds (the worker is killed)."""
        with self._lock:
            if self._pid != os.getpid():
                self._forget()
            request = {**request, "t": max(1, int(timeout / 4))}
            for _attempt in range(2):
                if self._proc is None:
                    self._start()
                try:
                    self._proc.stdin.write((json.dumps(request) + "\n").encode())
                    self._proc.stdin.flush()
                    line = self._readline(time.monotonic() + timeout)
                except (_WorkerDied, OSError, ValueError):  # it died (e.g. with the thread that started it): again
                    self.close()
                    continue
                if line is None:  # the deadline
                    self.close()
                    return None
                return bool(json.loads(line)["ok"])
            return None


_VERIFIER = _Verifier()
atexit.register(_VERIFIER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_VERIFIER._after_fork)


def _parses(latex: str, timeout: float) -> bool | None:
    return _VERIFIER.ask({"op": "parse", "s": latex}, timeout)


# ----------------------------------------------------------------------------------------------- the format


def _math_extract(text: str, *, trigger: str, timeout: float, max_chars: int) -> str | None:
    answer = extract_math_answer(text, trigger)
    if answer is None or len(answer) > max_chars:
        return None
    return answer if _parses(answer, timeout) else None


def _math_parse_gold(gold: Any, *, timeout: float, max_chars: int) -> str:
    text = math_gold_text(gold)
    if len(text) > max_chars:
        raise ValueError(f"The gold answer is {len(text)} characters long (at most {max_chars}): {text[:60]!r}...")
    ok = _parses(text, timeout)
    if not ok:
        why = f"timed out after {timeout:g} s" if ok is None else "math-verify parses no math from it"
        raise ValueError(f"Cannot parse the gold answer {text!r} as LaTeX ({why}; math answer format).")
    return text


def _math_is_correct(pred: str, gold: str, *, timeout: float) -> bool:
    if pred == gold:
        return True
    return bool(_VERIFIER.ask({"op": "verify", "g": gold, "p": pred}, timeout))  # None (timed out): wrong


def _math_from_program(value: Any, *, timeout: float, max_chars: int) -> str | None:
    if isinstance(value, str):
        text = _clean(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        text = str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))
    else:
        return None
    if not text or len(text) > max_chars:
        return None
    return text if _parses(text, timeout) else None


def math_format(
    name: str = "math",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_chars: int = MAX_ANSWER_CHARS,
    trigger: str = ANSWER_TRIGGER,
) -> AnswerFormat:
    """A math-verify answer format (the registered ``"math"`` uses the defaults; see the module docstring). Picklable.

    ``timeout``: wall-clock seconds per parse or comparison; ``max_chars``: the longest answer sent to math-verify.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return AnswerFormat(
        name=name,
        extract=partial(_math_extract, trigger=trigger, timeout=timeout, max_chars=max_chars),
        parse_gold=partial(_math_parse_gold, timeout=timeout, max_chars=max_chars),
        is_correct=partial(_math_is_correct, timeout=timeout),
        from_program=partial(_math_from_program, timeout=timeout, max_chars=max_chars),
        gold_text=math_gold_text,
    )


register_answer_format(math_format())
