"""Fault injection: each test breaks something around the code under test and checks what must still hold."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import reft_trl
from reft_trl.rewards.sandbox import SandboxPool, SandboxWarning

# ---------------------------------------------------------------------------------------------------------------
# ---- the sandbox dies with its trainer
#
# A trainer SIGKILLed (or OOM-killed) mid-batch cannot clean up: its keepers, zygotes and the programs they run
# must go by themselves within seconds, start no new program, and leave no scratch folder that the next pool does
# not remove. Sandbox processes are found by their command line, which carries their worker's (unique) scratch
# path: keepers, zygotes and programs alike (programs are clones of the zygote, without exec).

SRC = str(Path(reft_trl.__file__).resolve().parents[1])
SBX_DISABLE = tuple(x for x in os.environ.get("REFT_SANDBOX_TEST_DISABLE", "").split(",") if x)
DEATH_LIMIT_S = 10.0  # every sandbox process must be gone this long after its trainer's SIGKILL
LOOP = "def solution():\n    while True:\n        pass\n"  # pure: several share one process
LOOP_ALONE = "def solution():\n    x = [0]\n    while True:\n        x[0] += 1\n"  # not pure: a process of its own

TRAINER = textwrap.dedent(
    """
    import json, sys, threading, warnings
    warnings.simplefilter("ignore")
    from reft_trl.rewards.sandbox import SandboxPool

    cfg = json.loads(sys.argv[1])

    def main():
        pool = SandboxPool(num_workers=1, max_concurrent=2, timeout=60.0, disable=cfg["disable"]).start()
        scratch = [w.scratch for w in pool._workers["lean"]]
        print(json.dumps({"workers": pool.worker_pids(), "scratch": scratch}), flush=True)
        pool.run(cfg["programs"])  # 60 s per program: the test kills us long before

    if cfg["thread"]:  # the keepers' parent thread is not the main thread (no parent-death signal for them)
        t = threading.Thread(target=main)
        t.start()
        t.join()
    else:
        main()
    """
)


def _sandbox_processes(markers: list[bytes]) -> dict[int, int]:
    """pid -> ppid of every live process whose command line carries one of ``markers`` (zombies excluded)."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{d}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state not in ("Z", "X") and any(m in cmdline for m in markers):
            found[int(d)] = int(ppid)
    return found


def _kill_leftovers(markers: list[bytes]) -> None:
    """After a failure: SIGKILL what is left of this test's sandbox (only processes carrying its markers)."""
    for _ in range(20):
        left = _sandbox_processes(markers)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _markers(scratch: list[str]) -> list[bytes]:
    return [s.encode().hex().encode() for s in scratch]  # the worker's config, hex-encoded, is its argv


def _read_line(proc: subprocess.Popen, limit_s: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], limit_s)
    assert ready, f"trainer printed nothing within {limit_s} s"
    line = proc.stdout.readline()
    assert line, f"trainer exited early (rc={proc.poll()})"
    return line


def _wait_for(cond, limit_s: float, what: str):
    end = time.monotonic() + limit_s
    while not (value := cond()):
        assert time.monotonic() < end, f"{what}: not within {limit_s} s"
        time.sleep(0.05)
    return value


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("thread", "disable"),
    [(False, ()), (True, ()), (False, ("namespaces",))],
    ids=["main-thread", "worker-thread", "no-namespaces"],
)
def test_sigkilled_trainer_takes_its_busy_sandbox_along(tmp_path, monkeypatch, thread, disable):
    tmp = tmp_path / "tmp"  # a private TMPDIR: other pools on this machine neither see nor touch these folders
    tmp.mkdir()
    # More than the 2 slots can take: jobs are still queued when the trainer dies, and the pure loops share a
    # process (the rest of its jobs must not be run again after the trainer's death).
    programs = [LOOP] * 6 + [LOOP_ALONE] * 6
    cfg = {"thread": thread, "disable": [*SBX_DISABLE, *disable], "programs": programs}
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": SRC}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, json.dumps(cfg)], stdout=subprocess.PIPE, env=env, text=True
    )
    info = {"scratch": []}
    try:
        info = json.loads(_read_line(trainer, 90))
        ((keeper, zygote),) = info["workers"]
        markers = _markers(info["scratch"])
        # Mid-batch: the zygote runs infinite loops, and more of them are queued.
        _wait_for(
            lambda: zygote in _sandbox_processes(markers).values(),
            30,
            "programs running",
        )
        before = set(_sandbox_processes(markers))
        assert {keeper, zygote} <= before
        trainer.kill()
        trainer.wait(10)
        killed_at = time.monotonic()
        seen: set[int] = set()

        def all_gone() -> bool:
            alive = _sandbox_processes(markers)
            seen.update(alive)
            return not alive

        _wait_for(all_gone, DEATH_LIMIT_S, "every sandbox process dies with its trainer")
        took = time.monotonic() - killed_at
        time.sleep(0.5)  # and nothing comes back
        assert not _sandbox_processes(markers)
        assert not seen - before, f"program processes started after the trainer died: {sorted(seen - before)}"
        print(f"sandbox gone {took:.2f} s after the trainer's SIGKILL")
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(10)
        _kill_leftovers(_markers(info["scratch"]))

    # The dead trainer could not remove its scratch folders: the next pool to start does.
    assert all(os.path.isdir(s) for s in info["scratch"])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        with SandboxPool(num_workers=1, disable=SBX_DISABLE) as live:
            live.start()
            assert not any(os.path.exists(s) for s in info["scratch"]), "stale scratch folders not reclaimed"
            mine = live._workers["lean"][0].scratch
            with SandboxPool(num_workers=1, disable=SBX_DISABLE) as other:  # a live owner's folder is kept
                other.start()
                assert os.path.isdir(mine)
            assert live.run(["def solution():\n    return 6 * 7\n"]) == [42.0]
    assert not os.listdir(tmp), "closed pools leave their folders behind"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("disable", [(), ("namespaces",)], ids=["default", "no-namespaces"])
def test_programs_die_with_their_zygote(disable):
    """The zygote enforces deadlines: a program must not outlive it, whether or not it is the init of a pid
    namespace (with namespaces off, each program's parent-death signal kills it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)
        pool = SandboxPool(num_workers=1, max_concurrent=2, timeout=60.0, disable=(*SBX_DISABLE, *disable)).start()
    with pool:
        ((_keeper, zygote),) = pool.worker_pids()
        markers = _markers([pool._workers["lean"][0].scratch])
        results = []
        runner = threading.Thread(target=lambda: results.extend(pool.run_detailed([LOOP_ALONE] * 2)))
        runner.start()
        running = _wait_for(
            lambda: {p for p, pp in _sandbox_processes(markers).items() if pp == zygote},
            30,
            "programs running",
        )
        os.kill(zygote, signal.SIGKILL)
        try:
            _wait_for(lambda: not set(_sandbox_processes(markers)) & running, DEATH_LIMIT_S, "programs die")
        finally:
            _kill_leftovers(markers)
        runner.join(DEATH_LIMIT_S)
        assert not runner.is_alive()
        assert [r.status for r in results] == ["worker_lost"] * 2
