"""The sandbox: runs model-written Python programs (P-CoT rewards) in isolated, short-lived processes.

Light on purpose, like :mod:`reft_trl.rewards` (which re-exports ``run_programs``, ``SandboxPool`` and
``describe_isolation``): importing it imports neither torch, transformers, TRL nor another reft_trl package. Usage::

    from reft_trl.sandbox import run_programs, SandboxPool
    run_programs(["def solution():\\n    return 88 - 37\\n"])          # [51.0], default persistent pool
    with SandboxPool(num_workers=2, timeout=2.0) as pool:               # a private pool
        pool.run(programs)                                              # values, input order
        pool.run_detailed(programs)                                     # ProgramResult(value, status, seconds)
        pool.isolation                                                  # which mechanisms are active

:mod:`reft_trl.sandbox.python_tool` makes the pool a ``python`` tool for TRL's tool-calling rollouts
(``tools=[python_tool()]``). The pool itself is two files: :mod:`reft_trl.sandbox.pool`, the parent side (the pool, what ``solution()``'s result becomes, the
architecture), and ``_worker.py``, the keeper + zygote + program processes. The worker is a standalone script that
the pool runs with ``python -I -S``: it imports nothing from reft_trl, and nothing imports it. The threat model is
``docs/sandbox.md#threat-model`` in the repository.
"""

from reft_trl.sandbox.pool import *  # noqa: F403  (the pool's public names: ProgramResult, SandboxPool, run_programs...)
from reft_trl.sandbox.pool import __all__ as _pool_names
from reft_trl.sandbox.python_tool import *  # noqa: F403  (the python tool for TRL's tool-calling rollouts)
from reft_trl.sandbox.python_tool import __all__ as _tool_names

__all__ = [*_pool_names, *_tool_names]  # each listed once, in its module
