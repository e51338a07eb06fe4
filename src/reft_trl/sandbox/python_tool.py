"""The sandbox as a tool: a ``python`` tool for TRL's tool-calling rollouts (``tools=`` of ``ReFTTrainer`` /
``GRPOTrainer``) that runs the model's code in a :class:`~reft_trl.sandbox.SandboxPool` and returns what it printed.

Usage::

    from reft_trl.sandbox import python_tool
    trainer = ReFTTrainer(model, args=config, train_dataset=rows, tools=[python_tool()])  # conversational rows

The model calls ``python(code=...)``. ``code`` is a module (statements, imports, definitions); like a notebook cell,
the value of a last bare expression is printed too (``12 * 7`` -> ``84``). The tool returns everything the code
printed to stdout and stderr; if it raised, the last line of the traceback is appended (``ZeroDivisionError:
division by zero``). A call that ran out of time, died (memory limit, a signal, ``os._exit``) or was refused by the
sandbox returns one line saying so, beginning with ``Error:``; TRL passes the returned string to the model as the
tool message. Output is cut to the pool's ``max_output_chars`` (1,000 by default).

**Where the code runs.** Each call is one program of the pool: a fresh process behind every mechanism of the
sandbox (namespaces, Landlock, seccomp, rlimits, the outside wall-clock timeout; ``docs/sandbox.md``). The code
never runs in the trainer's process: the tool only builds the program text (the model's code as a string literal
inside a fixed ``solution()`` that captures the output) and reads back one string.

**No state across calls.** Variables do not persist from one call to the next, not even within one rollout: the
sandbox's guarantee is that nothing a program does outlives it (a fresh process per program, no shared files), and
a persistent interpreter per rollout would have to keep a process, its memory and its scratch files alive between
generation turns, which is exactly that guarantee given up. Replaying the earlier calls' code before each call would
stay inside it but re-runs their side effects and their time; it is not done. The tool's description tells the model
to write self-contained code.
"""

from __future__ import annotations

from collections.abc import Callable

from reft_trl.sandbox.pool import SandboxPool, get_default_pool

# The program the sandbox runs for one call: the model's code is the string literal {code!r}; everything here runs
# inside the sandboxed process. Names are underscored so the model's code does not clobber them by accident (if it
# does on purpose, it can only spoil its own output).
_PROGRAM = """def solution():
    import ast as _ast, io as _io, sys as _sys
    _out = _io.StringIO()
    _sys.stdout = _sys.stderr = _out
    _globals = {{"__name__": "__main__", "math": math}}
    try:
        _tree = _ast.parse({code!r}, "<python>", "exec")
        _last = None
        if _tree.body and isinstance(_tree.body[-1], _ast.Expr):
            _last = _ast.Expression(_tree.body.pop().value)
        exec(compile(_tree, "<python>", "exec"), _globals)
        if _last is not None:
            _value = eval(compile(_last, "<python>", "eval"), _globals)
            if _value is not None:
                print(repr(_value))
    except BaseException as _err:
        _name = type(_err).__name__
        print(f"{{_name}}: {{_err}}" if str(_err) else _name)
    finally:
        _sys.stdout, _sys.stderr = _sys.__stdout__, _sys.__stderr__
    return _out.getvalue()
"""

_STATUS_MESSAGES = {
    "timeout": "Error: the code ran out of time ({timeout:g} s) and was stopped.",
    "crash": "Error: the code's process died (memory limit, a signal or os._exit).",
    "rejected": "Error: the code was refused by the sandbox (too long).",
}


def tool_program(code: str) -> str:
    """The sandbox program that runs ``code`` as one call of the ``python`` tool (exposed for tests and audits)."""
    if not isinstance(code, str):
        raise TypeError(f"python tool: code must be a string, got {type(code).__name__}.")
    return _PROGRAM.format(code=code)


def run_tool_code(codes: list[str], *, pool: SandboxPool | None = None, timeout: float | None = None) -> list[str]:
    """Run each of ``codes`` as a ``python`` tool call (in parallel on the pool); the tool's reply for each."""
    pool = pool if pool is not None else get_default_pool()
    results = pool.run_detailed([tool_program(code) for code in codes], timeout)
    replies = []
    for result in results:
        if result.status == "ok" and isinstance(result.value, str):
            replies.append(result.value.removesuffix("\n") or "(no output)")
        else:
            message = _STATUS_MESSAGES.get(result.status, "Error: the sandbox could not run the code ({status}).")
            replies.append(
                message.format(timeout=timeout if timeout is not None else pool.timeout, status=result.status)
            )
    return replies


def python_tool(*, pool: SandboxPool | None = None, timeout: float | None = None) -> Callable[[str], str]:
    """The ``python`` tool for ``tools=[...]``: runs the model's code in ``pool`` (default: the process-wide pool)
    with ``timeout`` seconds per call (default: the pool's). See the module docstring for what it returns."""
    if timeout is not None and not (timeout > 0):
        raise ValueError(f"python_tool: timeout must be a positive number of seconds, got {timeout}.")

    def python(code: str) -> str:
        """Run a self-contained Python program in a sandbox and return what it prints.

        Variables do not persist between calls. The value of a last bare expression is printed too.

        Args:
            code: The Python code to run.
        """
        return run_tool_code([code], pool=pool, timeout=timeout)[0]

    return python


__all__ = ["python_tool", "run_tool_code", "tool_program"]
