"""The sandbox's parent side: :class:`SandboxPool`, its workers' handles, the default pool (usage: the package
docstring, :mod:`reft_trl.sandbox`).

Programs written by a policy under RL training are hostile input: the policy is rewarded for whatever makes
``solution()`` return the gold answer, and anything it writes gets executed. This module runs each program in its
own short-lived process, forked from a persistent pre-imported "zygote", behind every isolation mechanism an
unprivileged Linux user has, and returns only a plain value (a float, a string of at most 1,000 characters, or
``None``) that was converted *inside* the sandbox and sent back in a tiny tagged format (never pickle).

Conversion of ``solution()``'s result: ``int``/``float``/numpy scalars and 0-d arrays/sympy numbers/``Decimal``/
``Fraction``/other ``numbers.Real`` -> ``float`` (NaN and inf included: the caller rejects them); ``str`` (and
subclasses, whose ``__str__`` is ignored) -> the string truncated to 1,000 characters; ``bool`` (and numpy/sympy
booleans) -> ``None``: a boolean is not an answer; anything else (lists, ``None``, complex, objects, symbolic
expressions) -> ``None``. A program that fails in any way (syntax error, exception, no ``solution``, timeout,
crash, ``sys.exit``/``os._exit``, an unconvertible value) -> ``None``.

Architecture
------------
``SandboxPool`` owns N workers (default: one per CPU), persistent across calls. A worker is a fresh interpreter
(``python -I -S``, an empty environment, no inherited file descriptors, its own session, ``oom_score_adj`` 1000)
that runs the standalone worker script (``_worker.py``, beside this module). This "keeper" enters new user, network,
mount, IPC and UTS namespaces, mounts a private size-capped tmpfs for scratch space, unshares a pid namespace and
forks the zygote, pid 1 of that namespace. The zygote imports its preloaded modules, warms up the compiler,
applies to itself everything its children can inherit (rlimits, ``no_new_privs``, non-dumpable, a Landlock layer
that makes the filesystem read-only except the scratch area, a seccomp layer, an empty environ) and freezes its
heap (``gc.freeze``). It never runs program code. (It keeps capabilities only inside its own user namespace, for
``CLONE_NEWPID``; its seccomp layer denies mount, unshare, setns and the like.)

The parent sends programs over a pipe (length-prefixed frames). The zygote compiles them (the parser only reads
text; compiling here rather than in each child saves ~180 copy-on-write page faults per program). For each
program it sets the working directory to a free scratch slot and clones a child with ``CLONE_NEWPID``: every
program is pid 1 of its own pid namespace, so the zygote's seccomp layer can allow signals to pid 1 only (to
itself) and process creation only with flags that need capabilities, which programs drop. The child then adds
only what is specific to it: ``RLIMIT_CPU``, its own Landlock layer (write access to its slot only),
``close_range`` (left: /dev/null on fds 0-2, its result pipe on fd 3) and dropping its capabilities. It runs the
code, calls ``solution()``, converts the result, writes it (``F``+float64, ``S``+UTF-8 or ``N``) and exits. The
zygote learns of the exit through a pidfd, validates the bytes, enforces the wall-clock deadline with
``SIGKILL`` from outside, replaces the scratch slot if the program touched it, and sends results back without
ever blocking on the parent. The parent has its own watchdog per worker and replaces any worker that dies,
hangs or misbehaves; nothing it reads from a worker is unpickled.

Everything a child does between ``clone()`` and the program is kept to a few syscalls through pre-built ctypes
arguments, because on a VM every page a child (or the zygote) touches after a fork costs a copy-on-write fault
of a few microseconds; a per-child seccomp filter alone would cost 0.2-0.4 ms (BPF JIT, speculation
mitigations). Fork and exit of a ~9 MB zygote cost ~1 ms of CPU, the floor of this design. Two flavours of
zygote exist for the same reason: importing sympy + numpy makes a zygote ~10x larger and each fork ~3x dearer.
Programs whose text mentions ``sympy`` or ``numpy`` go to "heavy" zygotes (started lazily); all others go to "lean"
zygotes, which preload only ``math`` and bind the name ``sympy`` to a lazy module that imports sympy inside the
child on first use. The routing is a performance hint, not a security decision: both flavours are equally
isolated. Where ``CLONE_NEWPID`` is unavailable, each child installs a second seccomp layer (no fork, signals to
its own pid only) instead; without seccomp, programs still get their own pid namespace where possible, so that
whatever they fork dies with them.

Threat model
------------
The full threat model (every threat, its mechanism and status, the degradation rules) is in
``docs/sandbox.md`` of the repository, section "Threat model"; in short:

- Blocked by the kernel: files outside the program's scratch directory (Landlock), secrets in the environment or
  in other processes, the network (empty network namespace, seccomp denies sockets), subprocesses and ``exec``,
  signals to anything but itself, ``ptrace`` and the kernel's extra attack surface (seccomp deny-list), state
  left for the next program (a fresh process per program, except up to ``pure_batch`` programs that
  ``_worker.is_pure`` proves pure, each in a fresh namespace), forged results (validated and re-encoded
  by the zygote; nothing is unpickled).
- Limited: CPU (outside wall-clock ``SIGKILL`` + ``RLIMIT_CPU``), memory (``RLIMIT_AS``), disk (private tmpfs,
  ``RLIMIT_FSIZE``), output (``/dev/null``; results capped at 1,000 characters).
- The trainer's death (SIGKILL, OOM): every sandbox process dies with it within about a second (parent-death
  signals, hang-up of the command pipe, a pid namespace per worker); the next pool removes its scratch folders.
- Not covered: kernel and CPython vulnerabilities, side channels, contention with the trainer; reading the
  Python installation and system libraries is allowed.
- Degradation: a missing mechanism gives one :class:`SandboxWarning` and the pool runs with the rest;
  ``pool.isolation`` reports what is active, ``SandboxPool(require=("landlock", "seccomp"))`` refuses to run
  without them. Nothing needs root.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import json
import marshal
import math
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProgramResult",
    "SandboxError",
    "SandboxPool",
    "SandboxWarning",
    "describe_isolation",
    "get_default_pool",
    "run_programs",
]

WORKER_SCRIPT = Path(__file__).with_name("_worker.py")  # run as a script, never imported: see its docstring

DEFAULT_TIMEOUT = 5.0
MAX_OUTPUT_CHARS = 1000

# Wire protocol (mirrors _worker.py; a test checks that both files agree).
ST_OK, ST_ERROR, ST_TIMEOUT, ST_CRASH, ST_SETUP = 0, 1, 2, 3, 4
STATUS_NAMES = {ST_OK: "ok", ST_ERROR: "error", ST_TIMEOUT: "timeout", ST_CRASH: "crash", ST_SETUP: "sandbox_error"}
_HDR = struct.Struct("<I")
_JOB = struct.Struct("<Id")
_RES = struct.Struct("<IBd")
_F64 = struct.Struct("<d")
_MAX_FRAME_FROM_WORKER = 1 << 20

# Programs that mention these go to zygotes that have them imported (a performance hint, not a security check).
_HEAVY_RE = re.compile(r"sympy|numpy")

# Mechanisms whose absence triggers the SandboxWarning (each one blocks something the others do not fully cover).
PRIMARY_MECHANISMS = (
    "user_namespace",
    "network_namespace",
    "mount_namespace",
    "ipc_namespace",
    "pid_namespace",
    "landlock",
    "seccomp",
)
# Everything reported in ``pool.isolation`` (secondary ones add defence in depth or replace a missing primary one:
# ``pid_namespace_per_program`` is used when seccomp is unavailable to contain a program's forks).
ISOLATION_KEYS = (
    *PRIMARY_MECHANISMS,
    "uts_namespace",
    "private_tmpfs",
    "proc_remounted",
    "landlock_network",
    "landlock_signal_scope",
    "pid_namespace_per_program",
)


class SandboxError(RuntimeError):
    """The sandbox cannot run at all (workers do not start) or a required isolation mechanism is missing."""


class SandboxWarning(RuntimeWarning):
    """Emitted once per pool when some isolation mechanism is unavailable."""


@dataclass(frozen=True)
class ProgramResult:
    """One program's outcome. ``status``: ok | error | timeout | crash | sandbox_error | rejected | worker_lost."""

    value: float | str | None
    status: str
    seconds: float = 0.0


def _site_paths() -> list[str]:
    """site-packages directories of this interpreter (the workers run with -S and add them without .pth hooks)."""
    import site
    import sysconfig

    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    with contextlib.suppress(AttributeError):  # old virtualenv
        paths += site.getsitepackages()
    if site.ENABLE_USER_SITE:  # pip install --user
        paths.append(site.getusersitepackages())
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _read_paths() -> list[str]:
    """Directories of the Python installation that programs may read (Landlock); system libraries are added by
    the worker."""
    import sysconfig

    paths = [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")] + _site_paths()
    return list(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    except (ValueError, OSError):  # pragma: no cover
        return 8192


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Scratch folders: ``reft-sandbox-<kind>-<owner pid>-<random>`` in the temporary directory, each holding an
# ``.owner`` file that its pool keeps flock()ed while it lives. The kernel drops the lock when the owner dies,
# however it dies, so a later pool can tell (and remove) the folders of dead trainers; the pid is for humans.
_SCRATCH_NAME = re.compile(r"reft-sandbox-(?:lean|heavy)-\d+-[a-z0-9_]+")
_OWNER = ".owner"
_UNOWNED_GRACE_S = 60.0  # a folder without its .owner file is being created (a few microseconds) or abandoned


def _make_scratch(kind: str) -> tuple[str, int]:
    """A new scratch folder and the fd of its locked owner file (the lock is taken before the file has the name
    that other pools look for, so that none of them can ever find it unlocked)."""
    path = tempfile.mkdtemp(prefix=f"reft-sandbox-{kind}-{os.getpid()}-")
    tmp = os.path.join(path, _OWNER + ".tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, os.path.join(path, _OWNER))
    return path, fd


def _reclaim_stale_scratch() -> int:
    """Remove the scratch folders of dead pools (a trainer killed before it could clean up); returns how many.

    A folder is stale when its owner file can be locked (nobody holds it: every process that did has exited) or,
    without an owner file, when it is older than a minute. Only folders of this user are considered.
    """
    root = tempfile.gettempdir()
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for e in entries:
        if not _SCRATCH_NAME.fullmatch(e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not e.is_dir(follow_symlinks=False) or st.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(e.path, _OWNER), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            if time.time() - st.st_mtime > _UNOWNED_GRACE_S:
                shutil.rmtree(e.path, ignore_errors=True)
                removed += 1
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner is alive
            continue
        else:
            shutil.rmtree(e.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    return removed


class _Worker:
    """Parent-side handle of one keeper + zygote pair."""

    def __init__(self, pool: SandboxPool, kind: str):
        self.kind = kind
        self.scratch, self.owner_fd = _make_scratch(kind)
        cfg = {
            # The keeper dies with this process: a parent-death signal (only when spawned by the main thread: it
            # fires at the exit of the spawning thread) and hang-up of the command pipe (see _worker._keep).
            "parent_pid": os.getpid(),
            "pdeathsig": threading.current_thread() is threading.main_thread(),
            "kind": kind,
            "scratch": self.scratch,
            "slots": pool.max_concurrent,
            "memory_limit_mb": pool.memory_limit_mb,
            "file_limit_mb": pool.file_limit_mb,
            "tmpfs_mb": pool.tmpfs_mb,
            "max_output_chars": pool.max_output_chars,
            "disable": sorted(pool.disable),
            "pure_batch": pool.pure_batch,
            "preload": pool.preload if kind == "lean" else None,
            "sys_path": _site_paths(),
            "read_paths": _read_paths(),
        }
        self.proc = subprocess.Popen(
            [
                pool.python,
                "-I",
                "-S",
                "-B",
                "-X",
                "utf8",
                str(WORKER_SCRIPT),
                marshal.dumps(cfg).hex(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(pool.worker_env),
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        os.set_blocking(self.rfd, False)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        os.set_blocking(self.wfd, False)
        self.inflight: dict[int, int] = {}  # job id -> index in the current batch
        self.stale: set[int] = set()  # jobs of an interrupted batch: their results are dropped
        self.hello: dict | None = None
        self.zygote_pid: int | None = None
        self.started = self.last_progress = time.monotonic()
        self.dead = False

    @property
    def ready(self) -> bool:
        return self.hello is not None and self.zygote_pid is not None and not self.dead

    def kill(self, grace: float = 0.0) -> None:
        """Stop keeper + zygote (+ every program: they live in the zygote's pid namespace) and release fds.

        With ``grace``, first close the command pipe and wait that long: the zygote then kills its children and
        exits, and the keeper, which reaps it, exits after it. Otherwise (or if that takes too long) SIGKILL the
        keeper; the zygote follows through its parent-death signal.
        """
        self.dead = True
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()
        if self.proc.returncode is None and grace > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # a keeper in D state
                self.proc.wait(timeout=5)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self._release_owner()

    def _release_owner(self) -> None:
        if self.owner_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.owner_fd)
            self.owner_fd = -1

    def forget(self) -> None:
        """After os.fork() in the trainer: drop the inherited handles without touching the parent's processes."""
        self.dead = True
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()
        self._release_owner()  # (the lock stays with the parent; a forked child must not keep the folder alive)
        self.proc.returncode = 0  # not our child: keep Popen.__del__ from tracking or waiting for it


class SandboxPool:
    """A persistent pool of sandbox workers. Thread-safe, fork-safe, usable as a context manager.

    Args:
        num_workers: lean zygotes (and, lazily, as many heavy ones); default: the CPUs this process may use.
        timeout: default wall-clock limit per program, in seconds (``run(..., timeout=)`` overrides it).
        memory_limit_mb: address space a program may add on top of the zygote's (``RLIMIT_AS``); default: a
            quarter of the RAM divided by ``num_workers * max_concurrent``, clamped to 256-1024 MiB.
        max_concurrent: programs each zygote runs at the same time (more overlap of forking and running; the
            default 8 measured ~30% faster than 4 on a 2-core VM).
        file_limit_mb: ``RLIMIT_FSIZE`` (largest file a program may write in its scratch directory).
        tmpfs_mb: size of each worker's private scratch tmpfs, when mount namespaces are available (default:
            room for one largest file per concurrent program; it only uses memory for what is written).
        max_output_chars: strings returned by ``solution()`` are truncated to this length.
        max_program_chars: longer programs are not run (status ``rejected``).
        pure_batch: up to this many *pure* programs share one process, one after the other, each in a fresh
            namespace (1: a process for every program). A program is pure when a static check of its syntax
            tree shows it can reach nothing but its own values, ``math`` and side-effect-free builtins (see
            ``_worker.is_pure``): it cannot leave state behind for the next one. Other programs always
            get a process of their own, and so does a pure program that raises or is in a process that dies
            early (it is run again alone).
        disable: mechanisms to switch off ("namespaces", "landlock", "seccomp", "pid_namespace_per_program"),
            e.g. to measure their cost; missing mechanisms are reported by one :class:`SandboxWarning`.
        require: isolation keys (see ``ISOLATION_KEYS``) that must be active, else :class:`SandboxError`.
        startup_timeout: seconds a worker may take to import its modules and report ready.
        preload: modules the lean zygotes import before forking (default: ``math`` only; heavy zygotes always
            preload math, fractions, decimal, numpy and sympy). Every program gets ``math`` and ``sympy`` (lazy in
            lean zygotes) bound in its namespace whatever this says; other modules it imports itself, in its own
            process. Each preloaded module makes the zygote larger and every fork dearer.
        python: interpreter for the workers (default: ``sys.executable``).
        worker_env: environment of the workers (default: empty; numeric-library thread counts are pinned to 1).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        memory_limit_mb: int | None = None,
        *,
        max_concurrent: int = 8,
        file_limit_mb: int = 16,
        tmpfs_mb: int | None = None,
        max_output_chars: int = MAX_OUTPUT_CHARS,
        max_program_chars: int = 100_000,
        pure_batch: int = 8,
        disable: Iterable[str] = (),
        require: Iterable[str] = (),
        startup_timeout: float = 60.0,
        preload: Sequence[str] | None = None,
        python: str | None = None,
        worker_env: dict[str, str] | None = None,
    ):
        self.num_workers = int(num_workers) if num_workers else _cpu_count()
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        self.timeout = _check_timeout(timeout)
        self.max_concurrent = max(1, int(max_concurrent))
        if memory_limit_mb is None:  # a quarter of RAM shared by every program that may run at once
            share = _ram_mb() // 4 // (self.num_workers * self.max_concurrent)
            memory_limit_mb = min(1024, max(256, share))
        self.memory_limit_mb = int(memory_limit_mb)
        self.file_limit_mb = int(file_limit_mb)
        self.tmpfs_mb = int(tmpfs_mb) if tmpfs_mb is not None else self.file_limit_mb * self.max_concurrent
        self.max_output_chars = int(max_output_chars)
        self.max_program_chars = int(max_program_chars)
        # Sharing a process between pure programs is the one speed mechanism kept (issue: keep what costs >= 10%
        # at batch 64 when removed). benchmarks/reward_throughput.py --batch-sizes 64 --passes 3, pure_batch 8 vs
        # 1 alternated in shuffled order on a shared 2-vCPU VM: median per-round ratio 2.51x (9 rounds) and
        # 2.27x (8 rounds), e.g. 3,833 vs 1,431 programs/s; CPU per program 0.27 vs 0.89 ms.
        self.pure_batch = max(1, int(pure_batch))
        self.disable = frozenset(disable)
        unknown = self.disable - {"namespaces", "landlock", "seccomp", "pid_namespace_per_program"}
        if unknown:
            raise ValueError(f"unknown mechanisms in disable: {sorted(unknown)}")
        self.require = frozenset(require)
        unknown = self.require - set(ISOLATION_KEYS)
        if unknown:
            raise ValueError(f"unknown isolation keys in require: {sorted(unknown)}")
        self.startup_timeout = float(startup_timeout)
        self.preload = list(preload) if preload is not None else None
        self._inflight = 0  # jobs in flight per zygote; 0: as many as its slots can take (see _run_batch)
        self.python = python or sys.executable
        self.worker_env = dict(worker_env or {})
        self._workers: dict[str, list[_Worker]] = {"lean": [], "heavy": []}
        self._isolation: dict | None = None
        self._missing: dict[str, str] = {}
        self._warned = False
        self._closed = False
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self._startup_failures = 0
        self._reclaimed = False  # stale scratch folders are removed when the first worker starts
        self.stats = {"programs": 0, "worker_restarts": 0}
        _POOLS.add(self)

    # -- public API ------------------------------------------------------------------------------------------------
    def run(self, programs: Sequence[str], timeout: float | None = None) -> list[float | str | None]:
        """Run each program's ``solution()``; return the plain values (``None`` on any failure), in input order."""
        return [r.value for r in self.run_detailed(programs, timeout)]

    def run_detailed(self, programs: Sequence[str], timeout: float | None = None) -> list[ProgramResult]:
        """Like :meth:`run`, with each program's status and its run time inside the sandbox."""
        timeout = self.timeout if timeout is None else _check_timeout(timeout)
        programs = list(programs)
        with self._lock:
            self._check_usable()
            return self._run_locked(programs, timeout)

    def start(self) -> SandboxPool:
        """Start the lean workers now (otherwise the first ``run`` does) and wait until they are ready."""
        with self._lock:
            self._check_usable()
            self._ensure("lean")
            self._pump_until(lambda: all(w.ready for w in self._workers["lean"]), self.startup_timeout + 5)
        return self

    @property
    def isolation(self) -> dict:
        """Which mechanisms are active (keys: ``ISOLATION_KEYS`` + always-on ones), plus ``missing`` reasons."""
        if self._isolation is None:
            self.start()
        return {**self._isolation, "missing": dict(self._missing)}

    def worker_pids(self, kind: str = "lean") -> list[tuple[int, int | None]]:
        """(keeper pid, zygote pid) of the ready workers of one flavour, as seen from this process."""
        return [(w.proc.pid, w.zygote_pid) for w in self._workers[kind] if w.ready]

    def close(self) -> None:
        """Stop every worker (and every program still running). Idempotent; also runs at interpreter exit."""
        with self._lock:
            if os.getpid() != self._pid:
                self._forget()
            for ws in self._workers.values():
                for w in ws:  # close every command pipe first, so that the zygotes wind down in parallel
                    for f in (w.proc.stdin,):
                        with contextlib.suppress(OSError):
                            f.close()
                for w in ws:
                    w.kill(grace=2.0)
                ws.clear()
            self._closed = True

    shutdown = close

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._closed:
            raise SandboxError("this SandboxPool is closed")
        if os.getpid() != self._pid:  # forked without the at-fork hook (e.g. a raw fork)
            self._forget()

    def _forget(self) -> None:
        for ws in self._workers.values():
            for w in ws:
                w.forget()
            ws.clear()
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _drop_dead_idle_workers(self) -> None:
        """Notice workers that died while idle (EOF on their pipe), so that no job is sent to them."""
        ws = [w for kind_ws in self._workers.values() for w in kind_ws if w.ready and not w.inflight]
        if not ws:
            return
        poller = select.poll()
        for w in ws:
            poller.register(w.rfd, select.POLLIN)
        by_fd = {w.rfd: w for w in ws}
        for fd, _ev in poller.poll(0):
            w = by_fd[fd]
            data = _read_pipe(fd, 1 << 16)
            if data is None:
                continue
            if data:  # nothing is expected from an idle worker
                w.inbuf += data
                try:
                    self._parse(w, _no_result_expected)
                    continue
                except _ProtocolError:
                    pass
            w.kill()
            self.stats["worker_restarts"] += 1

    def _ensure(self, kind: str) -> None:
        ws = self._workers[kind]
        ws[:] = [w for w in ws if not w.dead]
        if len(ws) < self.num_workers and not self._reclaimed:
            self._reclaimed = True
            _reclaim_stale_scratch()
        while len(ws) < self.num_workers:
            ws.append(_Worker(self, kind))

    def _run_locked(self, programs: list, timeout: float) -> list[ProgramResult]:
        try:
            return self._run_batch(programs, timeout)
        finally:  # interrupted (KeyboardInterrupt...): results still on their way belong to nobody
            for ws in self._workers.values():
                for w in ws:
                    w.stale.update(w.inflight)
                    w.inflight.clear()

    def _run_batch(self, programs: list, timeout: float) -> list[ProgramResult]:
        n = len(programs)
        results: list[ProgramResult | None] = [None] * n
        queues: dict[str, deque] = {"lean": deque(), "heavy": deque()}
        for i, p in enumerate(programs):
            if not isinstance(p, str) or len(p) > self.max_program_chars:
                results[i] = ProgramResult(None, "rejected")
                continue
            try:
                data = p.encode("utf-8")
            except UnicodeEncodeError:
                results[i] = ProgramResult(None, "rejected")
                continue
            queues["heavy" if _HEAVY_RE.search(p) else "lean"].append((i, data))
        self.stats["programs"] += n
        remaining = sum(len(q) for q in queues.values())
        if not remaining:
            return results  # type: ignore[return-value]
        self._drop_dead_idle_workers()
        for kind, q in queues.items():
            if q:
                self._ensure(kind)
        frame_timeout = _JOB.pack(0, timeout)[4:]
        # jobs in flight per zygote: its slots + as many queued, or enough to fill each slot with pure programs
        limit = self._inflight or self.max_concurrent * (1 + self.pure_batch)
        watchdog = timeout + max(5.0, timeout)
        done = 0

        def on_result(w: _Worker, job_id: int, res: ProgramResult) -> None:
            nonlocal done
            idx = w.inflight.pop(job_id, None)
            if idx is None:
                if job_id in w.stale:
                    w.stale.discard(job_id)
                    return
                raise _ProtocolError(f"unknown job id {job_id}")
            results[idx] = res
            done += 1

        while done < remaining:
            # Dispatch: keep every ready zygote fed, least loaded first.
            for kind, q in queues.items():
                if not q:
                    continue
                ws = self._workers[kind]
                if not any(not w.dead for w in ws):
                    self._ensure(kind)
                for w in sorted((w for w in ws if w.ready), key=lambda w: len(w.inflight)):
                    if q and not w.inflight:
                        w.last_progress = time.monotonic()  # the watchdog counts from the first dispatch
                    while q and len(w.inflight) < limit:
                        i, data = q.popleft()
                        job_id = next(self._ids) & 0xFFFFFFFF
                        w.inflight[job_id] = i
                        body = b"J" + struct.pack("<I", job_id) + frame_timeout + data
                        w.outbuf += _HDR.pack(len(body)) + body
            self._pump_once(on_result, watchdog)
            # Replace dead workers while work remains (their in-flight programs were scored worker_lost).
            for kind, q in queues.items():
                ws = self._workers[kind]
                lost = [w for w in ws if w.dead]
                if lost:
                    for w in lost:
                        for idx in w.inflight.values():
                            results[idx] = ProgramResult(None, "worker_lost")
                            done += 1
                        w.inflight.clear()
                    ws[:] = [w for w in ws if not w.dead]
                    if q or any(w.inflight for w in ws):
                        self.stats["worker_restarts"] += len(lost)
                        self._ensure(kind)
        return results  # type: ignore[return-value]

    def _pump_until(self, cond, limit_s: float) -> None:
        end = time.monotonic() + limit_s
        while not cond():
            if time.monotonic() > end:
                raise SandboxError("sandbox workers did not start in time")
            self._pump_once(_no_result_expected, 1e9)
            if any(w.dead for w in self._workers["lean"]):
                self._ensure("lean")

    def _pump_once(self, on_result, watchdog: float) -> None:
        """One poll round over every worker: flush job frames, read result frames, enforce watchdogs."""
        poller = select.poll()
        by_fd: dict[int, _Worker] = {}
        now = time.monotonic()
        wait = 1.0
        for ws in self._workers.values():
            for w in ws:
                if w.dead:
                    continue
                if w.hello is None:
                    left = w.started + self.startup_timeout - now
                    if left <= 0:
                        self._worker_failed(w, "did not report ready within startup_timeout")
                        continue
                    wait = min(wait, left)
                elif w.inflight:
                    left = w.last_progress + watchdog - now
                    if left <= 0:
                        self._worker_failed(w, "watchdog: no result within timeout + margin", startup=False)
                        continue
                    wait = min(wait, left)
                poller.register(w.rfd, select.POLLIN)
                if w.outbuf:
                    poller.register(w.wfd, select.POLLOUT)
                by_fd[w.rfd] = w
                by_fd[w.wfd] = w
        if not by_fd:
            return
        for fd, _ev in poller.poll(max(1, int(wait * 1000))):
            w = by_fd[fd]
            if w.dead:
                continue
            if fd == w.wfd:
                try:
                    n = os.write(fd, w.outbuf)
                    del w.outbuf[:n]
                except BlockingIOError:
                    pass
                except OSError:
                    self._worker_failed(w, "command pipe closed", startup=w.hello is None)
                continue
            data = _read_pipe(fd, 1 << 18)
            if data is None:
                continue
            if not data:
                self._worker_failed(w, "worker exited", startup=w.hello is None)
                continue
            w.inbuf += data
            try:
                self._parse(w, on_result)
            except _ProtocolError as e:
                self._worker_failed(w, f"protocol error: {e}", startup=False)

    def _parse(self, w: _Worker, on_result) -> None:
        buf = w.inbuf
        pos, n = 0, len(buf)
        while n - pos >= 4:
            (length,) = _HDR.unpack_from(buf, pos)
            if length > _MAX_FRAME_FROM_WORKER or length == 0:
                raise _ProtocolError("bad frame length")
            if n - pos - 4 < length:
                break
            body = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            kind = body[:1]
            if kind == b"R":
                job_id, st, secs = _RES.unpack_from(body, 1)
                value = _decode_value(body[1 + _RES.size :], self.max_output_chars)
                status = STATUS_NAMES.get(st)
                if status is None or value is _BAD:
                    raise _ProtocolError("bad result frame")
                w.last_progress = time.monotonic()
                on_result(w, job_id, ProgramResult(value if status == "ok" else None, status, secs))
            elif kind == b"K":
                w.zygote_pid = int(json.loads(body[1:])["zygote_pid"])
            elif kind == b"H":
                hello = json.loads(body[1:])
                if "fatal" in hello:
                    if w.hello is not None:  # died while serving (e.g. its scratch tmpfs filled up): replace it
                        raise _ProtocolError(f"worker failed: {hello['fatal']}")
                    # failed to start (bad interpreter, import error...): deterministic, retrying will not help
                    w.kill()
                    raise SandboxError(f"sandbox worker failed to start: {hello['fatal']}")
                w.hello = hello
                w.last_progress = time.monotonic()
                self._startup_failures = 0
                self._on_hello(hello)
            else:
                raise _ProtocolError(f"unknown frame {kind!r}")
        del buf[:pos]

    def _on_hello(self, hello: dict) -> None:
        reported = {k: bool(v) for k, v in hello["isolation"].items() if k != "landlock_abi"}
        reported["landlock_abi"] = int(hello["isolation"].get("landlock_abi", 0))
        if self._isolation is None:
            self._isolation = reported
        else:  # report the weakest worker
            for k, v in reported.items():
                if isinstance(v, bool):
                    self._isolation[k] = self._isolation.get(k, v) and v
        for k, reason in hello.get("missing", {}).items():
            self._missing.setdefault(k, reason)
        absent = [k for k in self.require if not self._isolation.get(k)]
        if absent:
            self._closed = True
            for ws in self._workers.values():
                for w in ws:
                    w.kill()
            raise SandboxError(
                "required sandbox isolation unavailable: "
                + ", ".join(f"{k} ({self._missing.get(k, 'inactive')})" for k in absent)
            )
        if not self._warned:
            self._warned = True
            gaps = [k for k in PRIMARY_MECHANISMS if not self._isolation.get(k)]
            if not self._isolation.get("seccomp") and not self._isolation.get("pid_namespace_per_program"):
                gaps.append("pid_namespace_per_program")
            if gaps:
                active = [k for k in ISOLATION_KEYS if self._isolation.get(k)]
                warnings.warn(
                    "reft_trl sandbox is running with reduced isolation. Missing: "
                    + "; ".join(f"{k} ({self._missing.get(k, 'unavailable')})" for k in gaps)
                    + ". Active: process per program, rlimits, wall-clock timeout"
                    + ("".join(f", {k}" for k in active))
                    + ". Threat model: docs/sandbox.md in the reft-trl repository.",
                    SandboxWarning,
                    stacklevel=4,
                )

    def _worker_failed(self, w: _Worker, reason: str, startup: bool = True) -> None:
        was_starting = w.hello is None
        w.kill()
        if startup and was_starting:
            self._startup_failures += 1
            if self._startup_failures >= 3:
                raise SandboxError(f"sandbox worker could not start ({reason}); python={self.python}")

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._closed and os.getpid() == self._pid:
                for ws in self._workers.values():
                    for w in ws:
                        w.kill()
        except Exception:
            pass


class _ProtocolError(Exception):
    pass


def _no_result_expected(w: _Worker, job_id: int, _res: ProgramResult) -> None:
    if job_id not in w.stale:
        raise _ProtocolError("result frame while no job was in flight")
    w.stale.discard(job_id)


def _read_pipe(fd: int, n: int) -> bytes | None:
    """Up to ``n`` bytes from a worker's pipe; b"" at EOF or on an error, None when nothing is there yet."""
    try:
        return os.read(fd, n)
    except BlockingIOError:
        return None
    except OSError:
        return b""


_BAD = object()


def _decode_value(data: bytes, max_chars: int):
    tag = data[:1]
    if tag == b"N" and len(data) == 1:
        return None
    if tag == b"F" and len(data) == 9:
        return _F64.unpack_from(data, 1)[0]
    if tag == b"S":
        try:
            s = data[1:].decode("utf-8")
        except UnicodeDecodeError:
            return _BAD
        return s if len(s) <= max_chars else _BAD
    return _BAD


def _check_timeout(timeout) -> float:
    t = float(timeout)
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return t


# -- module-level default pool ---------------------------------------------------------------------------------------
_POOLS: weakref.WeakSet[SandboxPool] = weakref.WeakSet()
_DEFAULT_POOL: SandboxPool | None = None
_DEFAULT_LOCK = threading.Lock()


def get_default_pool() -> SandboxPool:
    """The process-wide pool, created on first use (again in a forked child), closed at interpreter exit."""
    global _DEFAULT_POOL
    with _DEFAULT_LOCK:
        if _DEFAULT_POOL is None or _DEFAULT_POOL._closed:
            _DEFAULT_POOL = SandboxPool()
        return _DEFAULT_POOL


def run_programs(
    programs: Sequence[str], timeout: float | None = None, *, pool: SandboxPool | None = None
) -> list[float | str | None]:
    """Run P-CoT programs in the sandbox; ``solution()``'s plain result per program (``None`` on failure)."""
    programs = list(programs)
    if not programs:
        return []
    return (pool or get_default_pool()).run(programs, timeout)


def describe_isolation(pool: SandboxPool | None = None) -> dict:
    """Which isolation mechanisms are active for ``pool`` (default: the default pool), with reasons for gaps."""
    return (pool or get_default_pool()).isolation


def _after_fork_in_child() -> None:
    global _DEFAULT_LOCK
    _DEFAULT_LOCK = threading.Lock()
    for pool in list(_POOLS):
        pool._forget()


def _close_all() -> None:
    for pool in list(_POOLS):
        try:
            if os.getpid() == pool._pid:
                pool.close()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all)
