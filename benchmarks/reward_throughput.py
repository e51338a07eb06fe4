"""Throughput of the sandboxed P-CoT executor on real programs (SVAMP, 3,043 annotated programs).

    python benchmarks/reward_throughput.py                      # batch sizes 8, 64, 512; writes JSON + table
    python benchmarks/reward_throughput.py --batch-sizes 64 --passes 3 --out /tmp/rt.json

For each batch size, every program is scored once per pass through one persistent ``SandboxPool`` (as a trainer
would), in consecutive ``pool.run(batch)`` calls. Reported: programs/s per batch (median, p10, p90), overall
programs/s, CPU milliseconds per program (this process + the workers and their children), and correctness (every
result must equal ``answer_value`` within 1e-2). For comparison only, an in-process ``exec`` ceiling runs the same
programs with no isolation at all (UNSAFE: never score model output like this).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from reft_trl.sandbox import SandboxPool, SandboxWarning

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("REFT_TRL_SHARED", REPO.parent / "shared")) / "data/mwp_reft/svamp_python_sdp.json"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def correct(value, gold: str) -> bool:
    return isinstance(value, float) and abs(value - float(gold.replace(",", ""))) <= 1e-2


def worker_cpu_seconds(pool: SandboxPool) -> float:
    """CPU time of the zygotes and of the program processes they reaped (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for kind in ("lean", "heavy"):
        for _, zygote in pool.worker_pids(kind):
            try:
                with open(f"/proc/{zygote}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def own_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def bench_sandbox(pool: SandboxPool, programs: list[str], golds: list[str], bs: int, passes: int) -> dict:
    pool.run(programs[:bs])  # warm: workers started, first batch paid
    rates, wrong, n_total, t_total = [], 0, 0, 0.0
    cpu0, own0 = worker_cpu_seconds(pool), own_cpu_seconds()
    batches = [(i, programs[i : i + bs]) for _ in range(passes) for i in range(0, len(programs), bs)]
    for i, batch in tqdm(batches, desc=f"sandbox bs={bs}", leave=False):
        t = time.perf_counter()
        values = pool.run(batch)
        dt = time.perf_counter() - t
        t_total += dt
        n_total += len(batch)
        rates.append(len(batch) / dt)
        wrong += sum(not correct(v, g) for v, g in zip(values, golds[i : i + bs]))
    cpu = worker_cpu_seconds(pool) - cpu0 + own_cpu_seconds() - own0
    return {
        "batch_size": bs,
        "batches": len(rates),
        "programs": n_total,
        "median": statistics.median(rates),
        "p10": percentile(rates, 0.1),
        "p90": percentile(rates, 0.9),
        "overall": n_total / t_total,
        "cpu_ms_per_program": 1e3 * cpu / n_total,
        "wrong": wrong,
    }


def bench_inprocess(programs: list[str], golds: list[str], bs: int) -> dict:
    """UNSAFE ceiling: exec in this process, no isolation, no timeout. For comparison only."""
    import sympy

    rates, wrong = [], 0
    for i in tqdm(range(0, len(programs), bs), desc=f"in-process exec bs={bs}", leave=False):
        t = time.perf_counter()
        values = []
        for src in programs[i : i + bs]:
            ns = {"__name__": "__main__", "math": math, "sympy": sympy}
            try:
                exec(compile(src, "<program>", "exec"), ns)
                v = ns["solution"]()
                values.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
            except Exception:
                values.append(None)
        rates.append(len(values) / (time.perf_counter() - t))
        wrong += sum(not correct(v, g) for v, g in zip(values, golds[i : i + bs]))
    return {
        "batch_size": bs,
        "median": statistics.median(rates),
        "p10": percentile(rates, 0.1),
        "p90": percentile(rates, 0.9),
        "wrong": wrong,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SVAMP python_sdp JSON (answer_cot, answer_value)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 512])
    ap.add_argument("--passes", type=int, default=1, help="times each program is scored per batch size")
    ap.add_argument("--num-workers", type=int, default=None, help="zygotes (default: one per CPU)")
    ap.add_argument("--max-concurrent", type=int, default=None, help="programs each zygote runs at once")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument(
        "--pure-batch", type=int, default=None, help="pure programs per process (default: the pool's; 1: one each)"
    )
    ap.add_argument("--disable", nargs="*", default=[], help="switch off isolation mechanisms to measure their cost")
    ap.add_argument("--no-inprocess", action="store_true", help="skip the unsafe in-process ceiling")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/reward_throughput.json")
    args = ap.parse_args()

    items = json.loads(args.data.read_text())
    programs = [it["answer_cot"] for it in items]
    golds = [str(it["answer_value"]) for it in items]
    kw = {"timeout": args.timeout, "disable": args.disable}
    if args.num_workers:
        kw["num_workers"] = args.num_workers
    if args.max_concurrent:
        kw["max_concurrent"] = args.max_concurrent
    if args.pure_batch:
        kw["pure_batch"] = args.pure_batch
    load_before = os.getloadavg()
    rows, ceiling = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SandboxWarning)  # the isolation report below says what is active
        with SandboxPool(**kw) as pool:
            isolation = pool.isolation
            for bs in args.batch_sizes:
                rows.append(bench_sandbox(pool, programs, golds, bs, args.passes))
            settings = {
                "num_workers": pool.num_workers,
                "max_concurrent": pool.max_concurrent,
                "pure_batch": pool.pure_batch,
                "timeout": pool.timeout,
            }
    if not args.no_inprocess:
        ceiling = [bench_inprocess(programs, golds, bs) for bs in args.batch_sizes]
    load_after = os.getloadavg()

    print(
        f"\nSandboxed execution of {len(programs)} SVAMP programs ({settings}); CPUs: {os.cpu_count()}, "
        f"load average before/after: {load_before[0]:.2f}/{load_after[0]:.2f}\n"
    )
    print("| batch size | programs/s (median) | p10 | p90 | overall | CPU ms/program | wrong |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['batch_size']} | **{r['median']:.0f}** | {r['p10']:.0f} | {r['p90']:.0f} | {r['overall']:.0f} "
            f"| {r['cpu_ms_per_program']:.2f} | {r['wrong']} / {r['programs']} |"
        )
    for c in ceiling:
        print(
            f"| {c['batch_size']} (in-process exec, UNSAFE, comparison only) | {c['median']:.0f} | {c['p10']:.0f} "
            f"| {c['p90']:.0f} | | | {c['wrong']} / {len(programs)} |"
        )
    active = [k for k, v in isolation.items() if v is True]
    print(f"\nActive isolation: {', '.join(active)}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "sandbox": rows,
                "inprocess_exec_unsafe": ceiling,
                "settings": settings,
                "isolation": isolation,
                "machine": {
                    "cpus": os.cpu_count(),
                    "kernel": platform.release(),
                    "python": sys.version.split()[0],
                    "loadavg_before": load_before,
                    "loadavg_after": load_after,
                },
                "data": str(args.data),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    if any(r["wrong"] for r in rows):
        sys.exit("some sandboxed results did not reproduce answer_value")


if __name__ == "__main__":
    main()
