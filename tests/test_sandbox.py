"""Tests for the sandboxed executor (reft_trl.sandbox: the pool and its standalone worker).

Hostile programs are run for real. Each one must come back as ``None`` (or a harmless value) within its timeout
plus a margin, leave no trace outside the sandbox, and leave the pool working. Tests that need an isolation
mechanism skip, naming the reason, when the kernel or the environment does not provide it. Destructive ones
(``os.kill(-1, 9)``...) run only when a pid namespace keeps them away from this machine's processes.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from reft_trl.sandbox import ProgramResult, SandboxError, SandboxPool, SandboxWarning, run_programs
from reft_trl.sandbox import pool as sb

pytestmark = pytest.mark.timeout(120)  # a sandbox bug must fail a test, not hang the suite

TIMEOUT = 1.0  # per-program timeout used by the hostile tests
MARGIN = 4.0  # scheduling slack on a loaded 2-core CI runner


def prog(body: str) -> str:
    """``def solution():`` with ``body`` (dedented) as its body."""
    return "def solution():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


# Run the suite against a degraded sandbox, e.g. REFT_SANDBOX_TEST_DISABLE=seccomp,landlock (what a kernel without
# them gives): tests needing a missing mechanism skip, the others exercise the fallback paths.
DISABLE = tuple(x for x in os.environ.get("REFT_SANDBOX_TEST_DISABLE", "").split(",") if x)


@contextlib.contextmanager
def interrupted_after(seconds: float):
    """SIGINT (Ctrl-C) this process after ``seconds``, with Python's own Ctrl-C handler installed meanwhile: a test
    run started in the background by a non-interactive shell inherits SIGINT ignored (POSIX), and Python then keeps
    it ignored, so the interrupt would never arrive (both interrupt tests "did not raise" in a CI rehearsal started
    that way). A timer that has not fired when the block ends is cancelled."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(seconds, signal.raise_signal, (signal.SIGINT,))
    try:
        timer.start()
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)


def make_pool(**kw) -> SandboxPool:
    """A started private pool (with the suite's DISABLE setting); the reduced-isolation warning is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        p = SandboxPool(disable=DISABLE, **kw)
        p.start()
    return p


@pytest.fixture(scope="module")
def pool():
    p = make_pool(num_workers=2, timeout=2.0)
    yield p
    p.close()


def need(p: SandboxPool, *keys: str) -> None:
    """Skip unless every isolation mechanism in ``keys`` is active."""
    info = p.isolation
    for k in keys:
        if not info.get(k):
            pytest.skip(f"{k} unavailable here: {info['missing'].get(k, 'inactive')}")


def need_any(p: SandboxPool, *keys: str) -> None:
    info = p.isolation
    if not any(info.get(k) for k in keys):
        pytest.skip(f"none of {keys} available here: {[info['missing'].get(k) for k in keys]}")


HEALTH = [prog("return 88 - 37"), prog("return math.sqrt(16)"), prog("return 'b'"), prog("return 7 / 2")]
HEALTH_EXPECTED = [51.0, 4.0, "b", 3.5]


def _worker_module():
    """The worker script imported as a module (it is standalone, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sbw", sb.WORKER_SCRIPT)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


def assert_healthy(p: SandboxPool) -> None:
    assert p.run(HEALTH) == HEALTH_EXPECTED


def run_timed(p: SandboxPool, src: str, timeout: float = TIMEOUT) -> tuple[ProgramResult, float]:
    t = time.monotonic()
    (r,) = p.run_detailed([src], timeout=timeout)
    return r, time.monotonic() - t


def descendants(root: int) -> set[int]:
    """All processes below ``root`` (seen from this process's /proc)."""
    children = collections.defaultdict(list)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(d))
    out, stack = set(), [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.add(c)
            stack.append(c)
    return out


def assert_only_zygotes_left(p: SandboxPool, wait: float = 2.0) -> None:
    """Below each keeper there must be exactly its zygote: no program process, fork or thread survived."""
    deadline = time.monotonic() + wait  # without seccomp, killed strays may need a moment to be reaped
    for keeper, zygote in p.worker_pids():
        expected = set() if keeper == zygote else {zygote}  # no pid namespace: the keeper is the zygote
        while descendants(keeper) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendants(keeper) == expected, f"stray processes below worker {keeper}"


# ---------------------------------------------------------------------------------------------------------------
# Results: conversion, program shapes, order


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return 51", 51.0),
        ("return -2.5", -2.5),
        ("return 2**53 + 1", float(2**53 + 1)),
        ("return 'C'", "C"),
        ("return 'x' * 5000", "x" * 1000),
        ("return True", None),
        ("return None", None),
        ("return [1, 2]", None),
        ("return (3,)", None),
        ("return {'a': 1}", None),
        ("return 1 + 2j", None),
        ("return b'12'", None),
        ("return lambda: 1", None),
        ("return (i for i in range(3))", None),
        ("return object()", None),
        ("return 10 ** 10000", None),  # too large for a float
        ("import decimal\nreturn decimal.Decimal('1.25')", 1.25),
        ("import fractions\nreturn fractions.Fraction(3, 4)", 0.75),
        ("class S(str):\n    def __str__(self):\n        return 'evil'\nreturn S('12')", "12"),
        ("class F(float):\n    def __float__(self):\n        while True: pass\nreturn F(2.5)", 2.5),
        (
            "class I(int):\n    def __int__(self):\n        return 0\n    def __index__(self):\n        return 0\nreturn I(9)",
            9.0,
        ),
    ],
)
def test_plain_value_conversion(pool, body, expected):
    (r,) = pool.run_detailed([prog(body)])
    assert r.value == expected and type(r.value) is type(expected), r


def test_nan_and_inf_come_back_as_floats(pool):
    nan, inf = pool.run([prog("return float('nan')"), prog("return -float('inf')")])
    assert math.isnan(nan) and inf == -math.inf


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return numpy.float32(2.5)", 2.5),
        ("return numpy.int64(7)", 7.0),
        ("return numpy.array(3.5)", 3.5),  # 0-d array
        ("return numpy.array([3.5])", None),  # 1-d array: not a number
        ("return numpy.bool_(True)", None),
        ("return numpy.complex128(1)", None),
        ("return sympy.Integer(6)", 6.0),
        ("return sympy.Rational(1, 4)", 0.25),
        ("return sympy.sqrt(2)", math.sqrt(2)),
        ("return sympy.pi", math.pi),
        ("return sympy.true", None),
        ("return sympy.Symbol('x') + 1", None),
        ("return sympy.I", None),
    ],
)
def test_numpy_and_sympy_values(pool, body, expected):
    (r,) = pool.run_detailed(["import numpy\n" + prog(body)])
    assert r.status == "ok", r
    assert r.value == pytest.approx(expected) if expected is not None else r.value is None


def test_program_shapes(pool):
    programs = [
        # blank lines inside the body (the reference truncated programs at the first blank line)
        'def solution():\n    """q"""\n    a = 3\n\n    b = 4\n\n\n    return a * b\n',
        # top-level helpers and imports are visible to solution()
        "import fractions\n\ndef half(x):\n    return fractions.Fraction(x, 2)\n\n\ndef solution():\n    return half(9)\n",
        # math without import, sympy without import (lean zygote: lazily imported inside the child)
        prog("return math.floor(math.sqrt(99))"),
        prog("return globals()['sym' + 'py'].Rational(3, 8)"),
        # sympy mentioned by name: runs in a zygote that has it preloaded
        prog("x = sympy.Symbol('x')\nreturn sympy.solve(2 * x - 7, x)[0]"),
        # a module-level call and a __main__ guard are fine
        prog("return 5") + "\nprint(solution())\nif __name__ == '__main__':\n    solution()\n",
        prog("return 'abc'"),
        "x = 1\n",  # no solution()
        "def solution(:\n",  # syntax error
        prog("return 1 / 0"),
    ]
    assert pool.run(programs) == [12.0, 4.5, 9.0, 0.375, 3.5, 5.0, "abc", None, None, None]


def test_results_in_input_order_with_mixed_batch(pool):
    good = [prog(f"return {i} * 3") for i in range(24)]
    hostile = [
        prog("while True: pass"),
        prog("import os\nos._exit(0)"),
        prog("import ctypes\nreturn ctypes.string_at(0)"),
        prog("return ' ' * 10**11"),
        prog("import time\ntime.sleep(30)"),
        "def solution(:",
    ]
    programs, expected = [], []
    for i, g in enumerate(good):
        programs.append(g)
        expected.append(float(i * 3))
        if i % 4 == 0:
            programs.append(hostile[(i // 4) % len(hostile)])
            expected.append(None)
    t = time.monotonic()
    assert pool.run(programs, timeout=TIMEOUT) == expected
    assert time.monotonic() - t < TIMEOUT + MARGIN


def test_statuses_tell_what_happened(pool):
    res = pool.run_detailed(
        [
            prog("return 1"),
            prog("raise ValueError('x')"),
            prog("while True: pass"),
            prog("import ctypes\nctypes.string_at(0)"),
            12345,  # type: ignore[list-item]
            "#" * (pool.max_program_chars + 1),
        ],
        timeout=TIMEOUT,
    )
    assert [r.status for r in res] == ["ok", "error", "timeout", "crash", "rejected", "rejected"]
    assert 0 <= res[0].seconds < 1 and res[2].seconds >= TIMEOUT


def test_empty_batch_and_bad_timeouts(pool):
    assert run_programs([], pool=pool) == []
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            pool.run([prog("return 1")], timeout=bad)


def test_timeout_parameter_is_honoured(pool):
    sleeper = prog("import time\ntime.sleep(1.5)\nreturn 1")
    r, elapsed = run_timed(pool, sleeper, timeout=0.5)
    assert r.status == "timeout" and r.value is None and 0.5 <= elapsed < 0.5 + MARGIN
    r, _ = run_timed(pool, sleeper, timeout=5.0)
    assert r.value == 1.0
    with make_pool(num_workers=1, timeout=0.3) as short:  # the pool default applies when no timeout is given
        t = time.monotonic()
        assert short.run([sleeper]) == [None]
        assert time.monotonic() - t < 0.3 + MARGIN


@pytest.mark.timeout(120)
def test_svamp_programs_reproduce_gold(pool, shared_data):
    items = json.loads((shared_data / "mwp_reft" / "svamp_python_sdp.json").read_text())
    assert len(items) == 3043
    programs = [it["answer_cot"] for it in items]
    values = []
    for i in range(0, len(programs), 512):
        values += pool.run(programs[i : i + 512])
    wrong = [
        (it["item_id"], v, it["answer_value"])
        for it, v in zip(items, values)
        if not (isinstance(v, float) and abs(v - float(it["answer_value"])) <= 1e-2)
    ]
    assert not wrong, wrong[:5]


# ---------------------------------------------------------------------------------------------------------------
# Hostile programs: time


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "body",
    [
        "while True: pass",
        "import time\ntime.sleep(100)",
        "return sum(range(10**12))",  # C-level loop: no bytecode boundary to interrupt
        "import re\nreturn bool(re.match(r'(a+)+$', 'a' * 64 + 'b'))",  # catastrophic regex backtracking, in C
        "while True:\n    try:\n        while True: pass\n    except BaseException:\n        continue",
        "import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True: pass",
        "import threading\nt = threading.Thread(target=lambda: [None for _ in iter(int, 1)])\nt.start()\nt.join()",
    ],
    ids=["loop", "sleep", "c-burn", "regex", "catch-all", "ignore-signals", "thread-burn"],
)
def test_runaway_programs_are_killed_on_time(pool, body):
    r, elapsed = run_timed(pool, prog(body))
    assert r.value is None and r.status == "timeout"
    assert elapsed < TIMEOUT + MARGIN
    assert_healthy(pool)


# ---------------------------------------------------------------------------------------------------------------
# Hostile programs: resources and crashes


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "body",
    [
        "return len(' ' * 10**11)",
        "x = []\nwhile True: x.append(' ' * 10**6)",
        "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return f(n + 1) + 1\nreturn f(0)",
        "import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**6): x = [x]\nreturn len(repr(x))",
        "import ctypes\nreturn ctypes.string_at(0)",
        "import os\nos.abort()",
        "import os\nos._exit(0)",
        "import sys\nsys.exit(0)",
        "raise SystemExit(3)",
        "raise KeyboardInterrupt",
        "return input()",
        "import ctypes\nctypes.memset(0, 1, 8)\nreturn 1",
        "import os\nos.write(3, b'S' + b'x' * 5000)\nreturn 1",  # scribbles on its own result pipe
        "import os\nos.close(3)\nreturn 1",
        "return [0] * 10**7",
    ],
    ids=[
        "alloc-1e11",
        "list-growth",
        "deep-recursion",
        "c-stack-overflow",
        "segfault",
        "abort",
        "os-exit",
        "sys-exit",
        "systemexit",
        "keyboardinterrupt",
        "stdin",
        "write-fault",
        "forged-result",
        "closed-result-pipe",
        "huge-list",
    ],
)
def test_failing_programs_score_none(pool, body):
    r, elapsed = run_timed(pool, prog(body), timeout=3.0)
    assert r.value is None, r
    assert elapsed < 3.0 + MARGIN
    assert_healthy(pool)


def test_resource_limits_are_in_place(pool):
    limits = prog(
        """
        import resource as r
        return repr([r.getrlimit(x) for x in (r.RLIMIT_CPU, r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_CORE, r.RLIMIT_NOFILE)])
        """
    )
    (res,) = pool.run([limits], timeout=2.0)
    cpu, address_space, fsize, core, nofile = eval(res)
    assert cpu == (4, 5)  # timeout + 2 s soft, + 3 s hard
    assert 0 < address_space[0] <= (pool.memory_limit_mb + 1024) << 20
    assert fsize == (16 << 20, 16 << 20) and core == (0, 0) and nofile[1] <= 1024
    # and the address-space limit bites: a 3 GB allocation fails inside the program, not on the machine
    assert pool.run(
        [prog("try:\n    b = bytearray(3 << 30)\nexcept MemoryError:\n    return 'refused'\nreturn 'got it'")]
    ) == ["refused"]


def test_reading_stdin_gets_nothing(pool):
    r, elapsed = run_timed(pool, prog("import sys\nreturn len(sys.stdin.read()) + len(sys.stdin.buffer.read())"))
    assert r.value == 0.0 and elapsed < TIMEOUT + MARGIN


def test_output_floods_are_discarded(pool):
    flood = prog(
        """
        import os, sys
        for _ in range(100):
            print('x' * 100_000)
            sys.stderr.write('y' * 100_000)
            os.write(1, b'z' * 100_000)
            os.write(2, b'w' * 100_000)
        return 5
        """
    )
    r, elapsed = run_timed(pool, flood, timeout=10.0)
    assert r.value == 5.0 and elapsed < 10.0
    assert_healthy(pool)


# ---------------------------------------------------------------------------------------------------------------
# Hostile programs: escaping the sandbox


def test_no_secrets_in_environment(monkeypatch):
    monkeypatch.setenv("REFT_SANDBOX_TEST_SECRET", "hunter2-s3cr3t")
    with make_pool(num_workers=1) as p:  # started after the secret was set
        env, proc_self = p.run(
            [
                prog("import os\nreturn repr(dict(os.environ))"),
                prog(
                    "try:\n    return open('/proc/self/environ', 'rb').read().decode()\nexcept OSError:\n    return ''"
                ),
            ]
        )
        assert env == "{}"
        assert "s3cr3t" not in proc_self and "REFT" not in proc_self


def test_cannot_read_other_processes_environ(pool):
    need_any(pool, "landlock", "proc_remounted")
    os.environ["REFT_SANDBOX_TEST_SECRET"] = "hunter2-s3cr3t"  # in this process's environ block via putenv
    try:
        me = os.getpid()
        probe = prog(
            f"""
            import os
            found = []
            paths = ['/proc/{me}/environ', '/proc/1/environ', '/proc/%d/environ' % os.getppid()]
            try:
                paths += ['/proc/%s/environ' % d for d in os.listdir('/proc') if d.isdigit()]
            except OSError:
                pass
            for path in paths:
                try:
                    data = open(path, 'rb').read()
                except OSError:
                    continue
                if b's3cr3t' in data or b'PATH=' in data:
                    found.append(path)
            return 'LEAK ' + ' '.join(found) if found else 'none'
            """
        )
        assert pool.run([probe]) == ["none"]
    finally:
        del os.environ["REFT_SANDBOX_TEST_SECRET"]


def test_files_outside_scratch_are_untouchable(pool, tmp_path):
    need(pool, "landlock")
    canary = tmp_path / "canary.txt"
    canary.write_text("precious")
    newfile = tmp_path / "new.txt"
    home = os.path.expanduser("~")
    attack = prog(
        f"""
        import os, shutil
        out = []
        for act in (
            lambda: os.remove({str(canary)!r}),
            lambda: open({str(canary)!r}, 'w').write('pwned'),
            lambda: open({str(canary)!r}, 'a').write('pwned'),
            lambda: os.rename({str(canary)!r}, {str(canary)!r} + '.moved'),
            lambda: os.truncate({str(canary)!r}, 0),
            lambda: open({str(newfile)!r}, 'w').write('x'),
            lambda: shutil.rmtree({str(tmp_path)!r}),
            lambda: open({str(canary)!r}).read(),
            lambda: os.listdir({home!r}),
            lambda: open('/etc/passwd').read(),
            lambda: open('/tmp/reft-sandbox-escape', 'w').write('x'),
        ):
            try:
                act()
                out.append('OK')
            except OSError as e:
                out.append(type(e).__name__)
        return ','.join(out)
        """
    )
    (res,) = pool.run([attack])
    assert "OK" not in res.split(","), res
    assert canary.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert not os.path.exists("/tmp/reft-sandbox-escape")


def test_scratch_directory_is_fresh_for_every_program():
    writer = prog(
        """
        import os
        open('data.txt', 'w').write('left behind')
        os.mkdir('sub')
        open('sub/x', 'w').write('y')
        os.chmod('sub', 0)
        os.chmod('.', 0o500)
        return os.getcwd()
        """
    )
    reader = prog("import os\nst = os.stat('.')\nreturn repr((os.getcwd(), os.listdir('.'), oct(st.st_mode & 0o777)))")
    with make_pool(num_workers=1, max_concurrent=1) as p:  # one slot: every program gets the same slot
        for _ in range(3):
            wrote_in, seen = p.run([writer, reader])
            assert isinstance(wrote_in, str) and isinstance(seen, str)
            cwd, entries, mode = eval(seen)
            assert entries == [] and mode == "0o700"
            assert cwd != wrote_in  # the dirtied directory was replaced, not reused
        # a program that leaves its directory untouched does not cost a new one
        a, b = p.run([prog("import os\nreturn os.getcwd()")] * 2)
        assert a == b


def test_scratch_directory_is_writable(pool):
    body = prog(
        """
        import os, tempfile
        with open('a.txt', 'w') as f:
            f.write('hello')
        with tempfile.TemporaryDirectory(dir='.') as d:
            open(os.path.join(d, 'b'), 'w').write('x')
        return open('a.txt').read()
        """
    )
    assert pool.run([body]) == ["hello"]


def test_no_subprocesses(pool, tmp_path):
    need_any(pool, "seccomp", "landlock")
    marker = tmp_path / "pwned"
    attacks = [
        prog(f"import subprocess\nsubprocess.run(['touch', {str(marker)!r}])\nreturn 'ran'"),
        prog(f"import os\nos.system('touch {marker}')\nreturn 'ran'"),
        prog(f"import os\nos.popen('touch {marker}').read()\nreturn 'ran'"),
        prog(f"import os\nos.execv('/usr/bin/touch', ['touch', {str(marker)!r}])"),
        prog(f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', {str(marker)!r}], {{}})\nreturn 'ran'"),
    ]
    pool.run(attacks, timeout=3.0)
    assert not marker.exists()
    assert_only_zygotes_left(pool)


def test_forks_and_threads_do_not_outlive_the_program(pool):
    programs = [
        prog(
            """
            import os, time
            try:
                pid = os.fork()
            except OSError as e:
                return 'fork refused: %s' % type(e).__name__
            if pid == 0:
                while True:
                    time.sleep(0.01)
            return 'forked'
            """
        ),
        prog(
            """
            import threading, time
            def spin():
                while True:
                    time.sleep(0.01)
            threading.Thread(target=spin).start()
            threading.Thread(target=spin, daemon=True).start()
            return 1
            """
        ),
        prog(
            """
            import multiprocessing
            try:
                p = multiprocessing.Process(target=lambda: None)
                p.start()
                return 'started'
            except Exception as e:
                return 'refused'
            """
        ),
    ]
    res = pool.run(programs, timeout=3.0)
    assert res[1] == 1.0  # threads are allowed...
    if pool.isolation.get("seccomp"):
        assert res[0] == "fork refused: PermissionError" and res[2] == "refused"
    time.sleep(0.2)
    assert_only_zygotes_left(pool)  # ...but neither they nor any fork survive the program
    assert_healthy(pool)


def test_no_network(pool):
    need_any(pool, "network_namespace", "seccomp")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        attacks = [
            prog(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\nreturn 'connected'"),
            prog(
                f"import urllib.request\nreturn urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1).read()"
            ),
            prog("import socket\nreturn repr(socket.getaddrinfo('example.com', 80))"),
            prog(
                "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))\nreturn 'sent'"
            ),
        ]
        assert pool.run(attacks, timeout=3.0) == [None] * len(attacks)
        if pool.isolation.get("seccomp"):  # no sockets at all: not even AF_UNIX (named sockets are outside Landlock)
            unix = prog("import socket\ns = socket.socket(socket.AF_UNIX)\nreturn 'unix socket'")
            assert pool.run([unix]) == [None]
        readable, _, _ = select.select([listener], [], [], 0.5)
        assert not readable, "a connection from the sandbox reached the test's listening socket"
    finally:
        listener.close()


@pytest.mark.parametrize(
    "body",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(0, signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
        "os.kill(0, signal.SIGKILL)",
        "os.kill({me}, signal.SIGKILL)",
        "os.killpg(os.getpgid({me}), signal.SIGKILL)",
        "[os.kill(p, signal.SIGKILL) for p in range(1, 400) if p != os.getpid()]",
    ],
    ids=["ppid", "own-group", "everyone", "pid-0", "test-pid", "test-group", "scan"],
)
def test_cannot_signal_anything_outside(pool, body):
    # Only with a pid namespace: without one, os.kill(-1, 9) as root would kill this machine's processes.
    need(pool, "pid_namespace")
    before = pool.worker_pids()
    src = "import os, signal\n" + prog(
        f"try:\n    {body.format(me=os.getpid())}\nexcept OSError as e:\n    return 'refused'\nreturn 'sent'"
    )
    r, elapsed = run_timed(pool, src, timeout=3.0)
    assert elapsed < 3.0 + MARGIN
    assert pool.worker_pids() == before  # no zygote or keeper was killed
    assert_healthy(pool)
    if pool.isolation.get("seccomp"):
        assert r.value == "refused"


def test_monkey_patching_does_not_leak_to_the_next_program(pool):
    patch = prog(
        """
        import builtins, sys, os, random
        random.seed(0)
        builtins.int = lambda *a: 42
        builtins.len = None
        math.sqrt = lambda x: 0
        sys.modules['math'] = None
        sys.modules['fractions'] = None
        os.environ['INJECTED'] = '1'
        return 1
        """
    )
    check = prog(
        """
        import os, fractions
        return int('7') + math.sqrt(16) + len([1]) + ('INJECTED' in os.environ) + fractions.Fraction(1, 2)
        """
    )
    for _ in range(3):
        res = pool.run([patch, check, patch, check])
        assert res == [1.0, 12.5, 1.0, 12.5]


def test_programs_cannot_leave_ipc_objects_for_the_next_one(pool):
    need(pool, "seccomp")
    create = prog("import ctypes\nreturn ctypes.CDLL(None).shmget(0x5EED, 4096, 0o1666)")
    assert pool.run([create]) == [-1.0]


# ---------------------------------------------------------------------------------------------------------------
# Pool lifecycle


def test_pool_is_reused_across_calls(pool):
    before = pool.worker_pids()
    assert len(before) == 2 and all(z for _, z in before)
    assert_healthy(pool)
    assert pool.run([prog("return 2")]) == [2.0]
    assert pool.worker_pids() == before


def test_recovers_after_zygote_is_killed():
    with make_pool(num_workers=2) as p:
        assert_healthy(p)
        old = p.worker_pids()
        os.kill(old[0][1], signal.SIGKILL)  # the zygote
        os.kill(old[1][0], signal.SIGKILL)  # the other worker's keeper (the zygote follows it)
        time.sleep(0.2)
        assert_healthy(p)  # no program is lost to the dead workers: they are noticed before dispatch
        p.start()  # wait for both replacements
        new = p.worker_pids()
        assert len(new) == 2 and not set(new) & set(old)
        assert p.stats["worker_restarts"] == 2


@pytest.mark.timeout(60)
def test_zygote_killed_mid_batch_scores_none_and_recovers():
    with make_pool(num_workers=1, max_concurrent=2) as p:
        ((_, zygote),) = p.worker_pids()
        threading.Timer(0.5, os.kill, (zygote, signal.SIGKILL)).start()
        res = p.run_detailed([prog("import time\ntime.sleep(2)\nreturn 1")] * 4, timeout=5.0)
        assert [r.value for r in res] == [None] * 4
        assert {r.status for r in res} == {"worker_lost"}
        assert_healthy(p)


@pytest.mark.timeout(60)
def test_interrupted_batch_does_not_poison_the_next_one():
    with make_pool(num_workers=1, max_concurrent=2) as p:
        before = p.worker_pids()
        with pytest.raises(KeyboardInterrupt), interrupted_after(0.3):
            p.run([prog("import time\ntime.sleep(0.8)\nreturn 1")] * 4)
        assert_healthy(p)  # late results of the interrupted batch are dropped, not taken for this batch's
        time.sleep(1.0)
        assert_healthy(p)
        assert p.worker_pids() == before and p.stats["worker_restarts"] == 0


@pytest.mark.timeout(60)
def test_deadlines_hold_while_the_parent_is_not_reading():
    """Results waiting for a parent that does not read must not stop the zygote from killing overdue programs."""
    with make_pool(num_workers=1, max_concurrent=2) as p:
        p._inflight = 64  # let all jobs reach the zygote at once
        sleeper = prog("import time\ntime.sleep(60)")
        chatty = prog("return '\u20ac' * 1000")  # ~3 KB of UTF-8 per result: 40 of them overflow a pipe
        with pytest.raises(KeyboardInterrupt), interrupted_after(0.3):
            p.run([sleeper] + [chatty] * 40, timeout=1.0)
        time.sleep(3.0)  # nobody reads the results meanwhile
        assert_only_zygotes_left(p, wait=0.0)  # the overdue program was killed all the same
        assert_healthy(p)
        assert p.stats["worker_restarts"] == 0


def test_context_manager_and_close_stop_all_processes():
    with make_pool(num_workers=1) as p:
        assert_healthy(p)
        ((keeper, zygote),) = p.worker_pids()
        scratch = p._workers["lean"][0].scratch
    for pid in (keeper, zygote):
        assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(scratch)
    with pytest.raises(SandboxError):
        p.run([prog("return 1")])


def test_default_pool_is_shared_and_cleaned_up_at_exit():
    code = textwrap.dedent(
        """
        import warnings, sys
        warnings.simplefilter('ignore')
        from reft_trl.sandbox import run_programs, get_default_pool
        assert run_programs(['def solution():\\n    return 6 * 7\\n']) == [42.0]
        assert get_default_pool() is get_default_pool()
        get_default_pool().start()
        print(' '.join(f'{k} {z}' for k, z in get_default_pool().worker_pids()))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2 * sb._cpu_count()
    time.sleep(0.5)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")], "workers outlived the interpreter"


@pytest.mark.timeout(120)
def test_pool_survives_fork_of_the_parent(pool):
    before = pool.worker_pids()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child gets its own workers, never the parent's pipes
        try:
            os.close(r)
            res = pool.run(HEALTH)
            mine = pool.worker_pids()
            os.write(w, json.dumps([res, mine]).encode())
            pool.close()
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    res, child_pids = json.loads(data)
    assert res == HEALTH_EXPECTED
    assert not {tuple(x) for x in child_pids} & set(before)
    assert pool.worker_pids() == before
    assert_healthy(pool)


def test_reduced_isolation_warns_once_and_still_works():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SandboxPool(num_workers=1, timeout=TIMEOUT, disable=("namespaces", "landlock", "seccomp")) as p:
            info = p.isolation
            assert_healthy(p)
            r, elapsed = run_timed(p, prog("while True: pass"))
            assert r.status == "timeout" and elapsed < TIMEOUT + MARGIN
            assert_healthy(p)
    ours = [w for w in caught if issubclass(w.category, SandboxWarning)]
    assert len(ours) == 1
    for k in ("landlock", "seccomp", "network_namespace", "pid_namespace"):
        assert not info[k] and k in str(ours[0].message)
    assert info["process_per_program"] and info["rlimits"] and info["wall_clock_timeout"]


def test_require_refuses_missing_mechanisms():
    with pytest.raises(SandboxError, match="landlock"):
        SandboxPool(num_workers=1, disable=("landlock",), require=("landlock",)).start()
    with pytest.raises(ValueError):
        SandboxPool(require=("teleportation",))
    with pytest.raises(ValueError):
        SandboxPool(disable=("everything",))


def test_isolation_report(pool):
    info = pool.isolation
    assert set(sb.ISOLATION_KEYS) <= set(info)
    assert info["process_per_program"] and info["rlimits"] and info["wall_clock_timeout"]
    for k in sb.ISOLATION_KEYS:
        assert info[k] or k in info["missing"], f"{k} inactive without a reason"


def test_light_package_and_standalone_worker():
    # importing the sandbox pulls in no training stack and no other reft_trl package (rewards depends on it)
    code = (
        "import sys, reft_trl.sandbox\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'reft_trl.rewards') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # the worker runs as a script beside the pool: no import of reft_trl, absolute or relative
    tree = ast.parse(sb.WORKER_SCRIPT.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("reft_trl"), ast.unparse(node)
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("reft_trl") for a in node.names), ast.unparse(node)


def test_protocol_constants_in_sync():
    worker = _worker_module()
    for name in ("ST_OK", "ST_ERROR", "ST_TIMEOUT", "ST_CRASH", "ST_SETUP"):
        assert getattr(worker, name) == getattr(sb, name)
    for name in ("_HDR", "_JOB", "_RES", "_F64"):
        assert getattr(worker, name).format == getattr(sb, name).format
    # the worker's seccomp programs assemble (forward jumps only) for every architecture it knows
    for arch in worker._ARCH:
        for layer in ("zygote", "child"):
            fprog, arr, idx = worker.build_seccomp(arch, layer, 1234)
            assert fprog.len == len(arr) and (idx == -1) == (layer == "zygote")


# libseccomp's architecture tokens (seccomp.h: SCMP_ARCH_X86_64, SCMP_ARCH_AARCH64 = the kernel's AUDIT_ARCH_*).
SCMP_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _libseccomp():
    """libseccomp through ctypes, or skip: the syscall tables can only be checked where it is installed."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("seccomp")
    if name is None:
        pytest.skip("libseccomp not installed (Debian: apt-get install libseccomp2): syscall numbers not checked")
    try:
        lib = ctypes.CDLL(name)
        resolve = lib.seccomp_syscall_resolve_name_arch
    except (OSError, AttributeError) as e:
        pytest.skip(f"libseccomp unusable ({e}): syscall numbers not checked")
    resolve.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    resolve.restype = ctypes.c_int
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    return lib


def test_syscall_numbers_match_libseccomp():
    """The seccomp filters are built from hand-typed syscall numbers: a wrong one silently allows a syscall.
    Check every number of both architectures against libseccomp's name resolution."""
    lib = _libseccomp()
    worker = _worker_module()
    assert set(worker._ARCH) == set(SCMP_ARCH)
    names_by_arch = {}
    for arch, spec in worker._ARCH.items():
        token = SCMP_ARCH[arch]
        assert lib.seccomp_arch_resolve_name(arch.encode()) == token == spec["audit"], arch
        numbers = {k: spec[k] for k in ("clone", "clone3", "capset", "prlimit64", "fcntl", "ioctl")}
        for group in ("zygote", "child", "signal_self"):
            numbers.update(spec[group])
        # used on every architecture (numbers above 403 are the same everywhere since Linux 5.1)
        numbers.update(
            close_range=worker.SYS_CLOSE_RANGE,
            landlock_create_ruleset=worker.SYS_LL_CREATE,
            landlock_add_rule=worker.SYS_LL_ADD_RULE,
            landlock_restrict_self=worker.SYS_LL_RESTRICT,
        )
        wrong = {
            name: (nr, lib.seccomp_syscall_resolve_name_arch(token, name.encode()))
            for name, nr in numbers.items()
            if lib.seccomp_syscall_resolve_name_arch(token, name.encode()) != nr
        }
        assert wrong == {}, f"{arch}: name: (table, libseccomp) {wrong}"
        names_by_arch[arch] = {n for g in ("zygote", "child", "signal_self") for n in spec[g]}
    # A syscall denied on one architecture and absent from another's table must not exist there (libseccomp
    # gives a negative pseudo-number for those), e.g. fork and vfork on aarch64.
    for arch, names in names_by_arch.items():
        for other, other_names in names_by_arch.items():
            for name in other_names - names:
                nr = lib.seccomp_syscall_resolve_name_arch(SCMP_ARCH[arch], name.encode())
                assert nr < 0, f"{name} exists on {arch} (nr {nr}) but only {other}'s table denies it"


# ---------------------------------------------------------------------------------------------------------------
# Pure programs sharing a process (SandboxPool(pure_batch=...))


PURE = [
    prog("a = 5\nb = a * 3 - 2\nresult = b // 2\nreturn result"),
    "import math\ndef helper(x):\n    return x * 2\n\ndef solution():\n    return math.floor(helper(3.5)) + math.pi\n",
    "from math import sqrt\nK = 3\ndef solution():\n    return sqrt(16) + K\n",
    prog("xs = [i * i for i in range(10) if i % 2]\nreturn sum(xs) + max(xs) + len({1: 2})"),
    prog("total = 0\nfor i in range(5):\n    total += i\nwhile total > 3:\n    total -= 3\nreturn total"),
    prog("s = f'{2.5:.1f}'\nreturn float(s) + round(2.567, 2) + abs(-1) + min(3, 4) + divmod(7, 2)[0]"),
    prog("a, b = 3, 4\nreturn (a ** 2 + b ** 2) ** 0.5 if a < b else 0"),
    prog("f = lambda x: x + 1\nreturn f(1)"),
    prog("return 'c'"),
    prog("return sorted(map(int, ['3', '1']))[0] + sum(list(zip(*[(1, 2)]))[0])"),
]
IMPURE = [
    prog("import os\nreturn 1"),
    prog("math.sqrt = lambda x: 0\nreturn 1"),  # attribute store
    prog("x = [0]\nx[0] = 1\nreturn x[0]"),  # subscript store
    prog("return math.__dict__"),  # dunder attribute of math
    prog("return [].append"),  # attribute of anything but math
    prog("return ''.join(['1'])"),
    prog("return __builtins__"),
    prog("return __import__('math').pi"),
    prog("return eval('1')"),
    prog("return getattr(math, 'pi')"),
    prog("return open('/etc/passwd')"),
    prog("print(1)\nreturn 1"),
    prog("return type(1)"),
    prog("return globals()"),
    prog("x = 1\ndel x\nreturn 1"),
    prog("try:\n    return 1\nexcept Exception:\n    return 2"),
    prog("raise ValueError"),
    prog("class A:\n    pass\nreturn 1"),
    prog("yield 1"),
    "from math import *\ndef solution():\n    return pi\n",
    "import math as m\ndef solution():\n    return m.pi\n",  # names 'm', then m.pi: attribute of non-math
    "@staticmethod\ndef solution():\n    return 1\n",
    prog("eval = 1\nreturn eval"),  # rebinding a forbidden builtin is refused too (flow-insensitive check)
    prog("return f'{math.pi.__class__}'"),
]


def test_is_pure_accepts_plain_computation_and_refuses_every_escape():
    import builtins

    worker = _worker_module()
    names = frozenset(dir(builtins))
    math_names = frozenset(n for n in dir(math) if not n.startswith("_"))

    def pure(src):
        return worker.is_pure(compile(src, "<p>", "exec", ast.PyCF_ONLY_AST), names, math_names)

    assert [src for src in PURE if not pure(src)] == []
    assert [src for src in IMPURE if pure(src)] == []


def test_pure_programs_in_a_shared_process_give_what_they_give_alone(shared_data):
    items = json.loads((shared_data / "mwp_reft" / "svamp_python_sdp.json").read_text())[:300]
    programs = [it["answer_cot"] for it in items] + PURE + IMPURE
    with make_pool(num_workers=1, pure_batch=1) as alone, make_pool(num_workers=1, pure_batch=8) as shared:
        expected = alone.run_detailed(programs, timeout=5.0)
        got = shared.run_detailed(programs, timeout=5.0)
    assert [(r.value, r.status) for r in got] == [(r.value, r.status) for r in expected]
    assert all(r.status == "ok" for r in got[: len(items) + len(PURE)])


def test_monkey_patching_cannot_reach_pure_programs_sharing_a_process():
    patch = prog("import builtins\nbuiltins.sum = lambda *a: 0\nmath.sqrt = lambda x: 0\nreturn 1")
    check = prog("return sum([1, 2]) + math.sqrt(16)")
    with make_pool(num_workers=1, max_concurrent=1, pure_batch=8) as p:
        assert p.run([patch, check, check, patch, check, check, check]) == [1.0] + [7.0] * 2 + [1.0] + [7.0] * 3


def _busy_program(seconds: float) -> str:
    """A pure program that computes for about ``seconds`` (calibrated in this process)."""
    n = 200_000
    while True:
        t = time.perf_counter()
        s = 0
        for i in range(n):
            s += i
        if time.perf_counter() - t > 0.05:
            break
        n *= 2
    n = int(n * seconds / (time.perf_counter() - t))
    return prog(f"s = 0\nfor i in range({n}):\n    s += i\nreturn s % 7")


@pytest.mark.timeout(60)
def test_pure_programs_sharing_a_process_each_get_their_own_timeout():
    # One child runs all of them (one slot): each takes ~40% of the timeout, together 2.4x the timeout. None may
    # be killed, because each program's deadline counts from the end of the one before.
    busy = _busy_program(0.4)
    with make_pool(num_workers=1, max_concurrent=1, pure_batch=8) as p:
        t = time.monotonic()
        res = p.run_detailed([busy] * 6, timeout=1.0)
        elapsed = time.monotonic() - t
    assert [r.status for r in res] == ["ok"] * 6, res
    assert elapsed > 1.0  # they did run one after the other, past the first program's deadline


@pytest.mark.timeout(60)
def test_runaway_pure_program_times_out_and_spares_the_others():
    ok = prog("return 6 * 7")
    burn = prog("return sum(range(10**12))")  # pure, but runs forever (in C)
    with make_pool(num_workers=1, max_concurrent=1, pure_batch=8) as p:
        t = time.monotonic()
        res = p.run_detailed([ok, ok, burn, ok, ok, ok], timeout=TIMEOUT)
        elapsed = time.monotonic() - t
        assert [r.status for r in res] == ["ok", "ok", "timeout", "ok", "ok", "ok"]
        assert [r.value for r in res] == [42.0, 42.0, None, 42.0, 42.0, 42.0]
        assert elapsed < TIMEOUT + MARGIN
        assert_healthy(p)


def test_pure_programs_that_fail_are_run_again_alone():
    ok = prog("return 6 * 7")
    failing = [
        prog("return 1 / 0"),
        prog("return len([0] * 10**10)"),  # MemoryError under RLIMIT_AS
        prog("def f(n):\n    return f(n + 1)\nreturn f(0)"),  # RecursionError
        prog("return undefined_name"),
        prog("return int('x')"),
    ]
    with make_pool(num_workers=1, max_concurrent=1, pure_batch=8) as p:
        res = p.run_detailed([ok, *failing, ok, ok], timeout=3.0)
    assert [r.value for r in res] == [42.0] + [None] * len(failing) + [42.0, 42.0]
    assert [r.status for r in res] == ["ok"] + ["error"] * len(failing) + ["ok", "ok"]
