"""The math-verify worker of the ``"math"`` answer format: a standalone script, run as its own process.

Not imported by the library: :mod:`reft_trl.rewards.math_answers` starts it with ``python <this file>`` and talks to
it over stdin/stdout, one JSON object per line each way (strings in, booleans out; nothing is pickled):

* ``{"op": "parse", "s": LATEX, "t": SECONDS}`` -> ``{"ok": true}`` when math-verify parses ``\\boxed{LATEX}`` into a
  math (sympy) object, else ``{"ok": false}`` (the matched text alone, math-verify's fallback, does not count);
* ``{"op": "verify", "g": GOLD, "p": PRED, "t": SECONDS}`` -> ``{"ok": true}`` when ``verify(parse(GOLD),
  parse(PRED))`` holds.

Why a process: math-verify bounds its work with ``signal.alarm`` (``parsing_timeout``, ``timeout_seconds``), which
only works in the main thread of the main interpreter, cancels any alarm the caller had set, and cannot interrupt
long C-level work. Here it runs in the main thread of a process of its own, with math-verify's own limits of
``t`` seconds per step, and the parent kills and restarts the whole process when an answer is not back within its
wall-clock deadline. The first line written is ``{"ready": true}`` once math-verify is imported, or
``{"error": "..."}`` if it cannot be.
"""

import json
import logging
import os
import sys

CACHE_SIZE = 20_000
"""Parsed answers and comparisons remembered (the cache is emptied when full)."""


class _TimeoutFlag(logging.Handler):
    """Counts math-verify's timeout warnings (it returns [] or False on a timeout, as for a plain failure)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "timeout" in record.getMessage().lower():
            self.count += 1


class _Cache:
    """``cache(function, *args)`` = ``function(*args)``, remembered unless math-verify timed out during it (counted
    by ``timeouts``): a busy moment must not make an answer unparsable, or a pair unequal, for the rest of the
    worker's life. Emptied when it holds ``size`` results."""

    def __init__(self, timeouts: _TimeoutFlag, size: int = CACHE_SIZE) -> None:
        self.timeouts, self.size, self.results = timeouts, size, {}

    def __call__(self, function, *args):
        key = (function.__name__, *args)
        if key in self.results:
            return self.results[key]
        before = self.timeouts.count
        result = function(*args)
        if self.timeouts.count == before:
            if len(self.results) >= self.size:
                self.results.clear()
            self.results[key] = result
        return result


def _die_with_parent(parent: int) -> None:
    """Be killed by the kernel when the thread that started this process exits (``PR_SET_PDEATHSIG``, Linux): a
    thread of this process could not do it while math-verify holds the GIL in a long computation. An idle worker
    also exits at EOF on stdin. The client restarts a worker that died with a short-lived thread that started it."""
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)


def main() -> None:
    _die_with_parent(int(os.environ.get("REFT_MATH_WORKER_PARENT", os.getppid())))
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # this package's modules (cot, scoring, ...) must not shadow anything math-verify imports
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel; stray prints go to stderr (discarded)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except Exception as err:  # ImportError, or a broken install
        out.write(json.dumps({"error": f"{type(err).__name__}: {err}"}) + "\n")
        return

    # math-verify's default LaTeX normalisation (units, malformed operators such as \frac12, nits), boxed first.
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    timeouts = _TimeoutFlag()
    math_verify_log = logging.getLogger("math_verify")  # math-verify reports a timeout only as a warning there
    math_verify_log.addHandler(timeouts)
    math_verify_log.propagate = False

    def parsed(latex: str, seconds: int):
        # The text is already the answer (the format extracted it): boxing it makes math-verify read all of it.
        return parse("\\boxed{" + latex + "}", extraction_config=config, parsing_timeout=seconds)

    def equal(gold: str, pred: str, seconds: int) -> bool:
        gold_parsed, pred_parsed = cached(parsed, gold, seconds), cached(parsed, pred, seconds)
        # The lists include math-verify's fallback text, compared as strings by verify (as in TRL's accuracy_reward).
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=seconds))

    cached = _Cache(timeouts)

    out.write(json.dumps({"ready": True}) + "\n")
    for line in iter(sys.stdin.readline, ""):
        try:
            request = json.loads(line)
            seconds = max(1, int(request.get("t", 2)))
            if request["op"] == "parse":
                ok = any(not isinstance(x, str) for x in cached(parsed, request["s"], seconds))
            else:
                ok = cached(equal, request["g"], request["p"], seconds)
        except Exception:  # math-verify does not raise by default; anything else is "no"
            ok = False
        out.write(json.dumps({"ok": ok}) + "\n")


if __name__ == "__main__":
    main()
