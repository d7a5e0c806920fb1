"""Team mode: several ``ledger work`` processes sharing one PostgreSQL ledger, against the simulator.

    python bench/team_bench.py [--only 123] [--n 600]

Every worker is ``ledger work --no-progress`` started as its own process, all at once, in one shared
project folder (team mode's set-up: one folder, one ledger), after one ``ledger scan``; every
PostgreSQL run gets a fresh database on 127.0.0.1:5432, dropped afterwards. A run's wall time is from
the first worker's start to the last worker's exit. After every run the ledger must hold all N jobs
``done`` and the simulator must have created exactly N tasks (nothing paid twice). Prints, each
beside its baseline from the same run:

  1. jobs/s at G=0 (N=600 by default, one version per segment) for 1, 2 and 4 workers of
     concurrency 16 each on one PostgreSQL ledger, beside 1 worker of concurrency 16 on a SQLite
     ledger (./ledger.db);
  2. efficiency at N=64, G=5 s with a total concurrency of 16 split across the workers (1 x 16,
     2 x 8, 4 x 4) on PostgreSQL: ideal time N/16*G (20 s) divided by wall time, beside 1 x 16 on
     SQLite;
  3. team keys: 2 workers x concurrency 8 with two keys (SORA_API_KEYS=KEY_A@2,KEY_B@3) against a
     simulator that refuses a key's create past its limit, N=40, G=2 s: wall, ideal (N/5*G: at most
     5 generations at once), efficiency, the most generations each key ran at once and the creates
     the simulator refused for a key at its limit (goal: peaks within 2 and 3, no refusals);
  4. `ledger status` while 4 workers x concurrency 16 work N=600, G=2 s on PostgreSQL: the wall time
     of each `ledger status` process (median and worst of 5), beside the same command on the same
     ledger with no worker running.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from work_bench import Simulator, bench_project, provider_env  # noqa: E402

from ledger.sim.server import SimConfig, SimServer  # noqa: E402

# The test suite's server (tests/integration/conftest.py POSTGRES_SERVER); ledger's own URL form names the driver.
POSTGRES_SERVER = "postgresql://root@127.0.0.1:5432"
LEDGER_PG = "postgresql+psycopg://root@127.0.0.1:5432"
KEY_A, KEY_B = "sora-team-a00000000000000000000000000", "sora-team-b00000000000000000000000000"


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one run; yields ledger's URL for it and drops it afterwards."""
    import psycopg

    name = f"ledger_team_bench_{os.getpid()}_{time.monotonic_ns()}"
    admin = psycopg.connect(f"{POSTGRES_SERVER}/test", autocommit=True, connect_timeout=3)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{LEDGER_PG}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def query(db: Optional[str], root: Path, sql: str) -> List[tuple]:
    """Rows of ``sql`` from the run's ledger: the PostgreSQL URL ``db``, or ``root``/ledger.db."""
    if db is None:
        with sqlite3.connect(root / "ledger.db") as conn:
            return conn.execute(sql).fetchall()
    import psycopg

    with psycopg.connect(db.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=5) as conn:
        return list(conn.execute(sql).fetchall())


def as_time(value: Any) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass
class Run:
    n: int
    workers: int
    concurrency: int
    wall: float  # first worker's start to the last worker's exit
    worker_walls: List[float]
    codes: List[int]
    done: int
    tasks_created: int
    span: float  # the ledger's first submit to last save
    done_by_worker: List[int]
    stats: Dict[str, Any] = field(default_factory=dict)
    logs: List[Path] = field(default_factory=list)

    def checks(self) -> str:
        ok = self.done == self.n and self.tasks_created == self.n and not any(self.codes)
        return (f"{self.done}/{self.n} done, {self.tasks_created} tasks created, exit codes "
                f"{','.join(map(str, self.codes))}{'' if ok else '  <-- NOT AS EXPECTED'}")


def team_run(n: int, workers: int, concurrency: int, server_env: Mapping[str, str],
             stats: Callable[[], Dict[str, Any]], db: Optional[str], *, verbose: bool = False) -> Run:
    """``ledger scan`` once, then ``workers`` ``ledger work --concurrency C`` processes started at
    once in one shared folder, on the ledger ``db`` (None: SQLite ./ledger.db)."""
    root = bench_project(n, "ledger-team-bench-")
    logs_dir = Path(tempfile.mkdtemp(prefix="ledger-team-bench-logs-"))
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}
    env.update(server_env)
    env["GEN_COUNT_PER_SEGMENT"] = "1"
    if db is not None:
        env["LEDGER_DATABASE_URL"] = db
    subprocess.run([sys.executable, "-m", "ledger", "scan"], cwd=root, env=env, check=True, capture_output=True)
    command = [sys.executable, "-m", "ledger", *(["-v"] if verbose else []), "work", "--concurrency",
               str(concurrency), "--no-progress"]
    procs, files, logs = [], [], []
    started = time.perf_counter()
    for i in range(workers):
        log = logs_dir / f"worker{i}.log"
        out = open(log, "w")
        files.append(out)
        logs.append(log)
        procs.append(subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT))
    walls = [0.0] * workers
    pending = set(range(workers))
    while pending:
        for i in list(pending):
            if procs[i].poll() is not None:
                walls[i] = time.perf_counter() - started
                pending.discard(i)
        time.sleep(0.005)
    wall = time.perf_counter() - started
    for out in files:
        out.close()
    (done,), = query(db, root, "SELECT count(*) FROM jobs WHERE state = 'done'")
    first, last = query(db, root, "SELECT (SELECT min(at) FROM events WHERE to_state = 'submitting'), "
                                  "(SELECT max(finished_at) FROM jobs WHERE state = 'done')")[0]
    by_worker = sorted((c for _, c in query(db, root, "SELECT worker, count(*) FROM events WHERE to_state = 'done' "
                                                      "GROUP BY worker")), reverse=True)
    span = (as_time(last) - as_time(first)).total_seconds() if first and last else float("nan")
    got = stats()
    shutil.rmtree(root, ignore_errors=True)
    if not verbose and not any(p.returncode for p in procs):
        shutil.rmtree(logs_dir, ignore_errors=True)  # kept for -v runs and for workers that failed
    return Run(n, workers, concurrency, wall, walls, [p.returncode for p in procs], done, got["tasks_created"],
               span, by_worker, got, logs)


def describe(run: Run) -> str:
    split = "+".join(map(str, run.done_by_worker)) if run.workers > 1 else ""
    return (f"worker exits {', '.join(f'{w:.2f}' for w in run.worker_walls)} s; ledger first submit to last save "
            f"{run.span:.2f} s" + (f"; jobs done per worker {split}" if split else "") + f"; {run.checks()}")


def show_failures(run: Run) -> None:
    """The last lines of every worker that exited non-zero."""
    for code, log in zip(run.codes, run.logs):
        if code:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:]
            print(f"      {log.name} exited {code}; its last lines:")
            for line in tail:
                print(f"        {line}")


def scenario_1(n: int, verbose: bool) -> None:
    print(f"1. N={n} G=0, `ledger work --concurrency 16` per worker: jobs/s from the first start to the last exit")
    sim = Simulator(0.0)
    try:
        base = team_run(n, 1, 16, sim.env(), sim.stats, None, verbose=verbose)
    finally:
        sim.close()
    print(f"   baseline, 1 worker, SQLite    : {n / base.wall:7.1f} jobs/s (wall {base.wall:.2f} s); {describe(base)}")
    show_failures(base)
    for workers in (1, 2, 4):
        sim = Simulator(0.0)
        try:
            with pg_database() as db:
                run = team_run(n, workers, 16, sim.env(), sim.stats, db, verbose=verbose)
        finally:
            sim.close()
        print(f"   {workers} worker(s), PostgreSQL      : {n / run.wall:7.1f} jobs/s (wall {run.wall:.2f} s; "
              f"{base.wall / run.wall:.2f}x the baseline's jobs/s); {describe(run)}")
        show_failures(run)


def scenario_2(verbose: bool) -> None:
    n, g, total = 64, 5.0, 16
    ideal = n / total * g
    print(f"2. N={n} G={g:.0f}s, total concurrency {total} split across the workers: efficiency = ideal "
          f"{ideal:.0f} s / wall (first start to last exit)")
    rows = [("baseline, 1 x 16, SQLite", 1, None), ("1 x 16, PostgreSQL", 1, "pg"), ("2 x 8, PostgreSQL", 2, "pg"),
            ("4 x 4, PostgreSQL", 4, "pg")]
    for label, workers, kind in rows:
        sim = Simulator(g)
        try:
            if kind is None:
                run = team_run(n, workers, total // workers, sim.env(), sim.stats, None, verbose=verbose)
            else:
                with pg_database() as db:
                    run = team_run(n, workers, total // workers, sim.env(), sim.stats, db, verbose=verbose)
        finally:
            sim.close()
        print(f"   {label:24}: wall {run.wall:6.2f} s -> efficiency {ideal / run.wall:.3f} "
              f"(first submit to last save: {ideal / run.span:.3f}); {describe(run)}")
        show_failures(run)


def scenario_3(verbose: bool) -> None:
    n, g, workers, concurrency = 40, 2.0, 2, 8
    ideal = n / 5 * g
    print(f"3. team keys: {workers} workers x concurrency {concurrency}, SORA_API_KEYS=KEY_A@2,KEY_B@3 (the simulator "
          f"limits the keys to 2 and 3 at once), N={n} G={g:.0f}s, PostgreSQL")
    # `ledger sim` has no option for keys mode: the simulator runs in this process (the workers are processes).
    sim = SimServer(SimConfig(api_key=None, keys={KEY_A: 2, KEY_B: 3}, gen_seconds=g, balance=10**9)).start()
    try:
        env = {**provider_env("sora_hk", sim.base_url), "SORA_API_KEY": "", "SORA_API_KEYS": f"{KEY_A}@2,{KEY_B}@3"}
        with pg_database() as db:
            run = team_run(n, workers, concurrency, env, sim.stats, db, verbose=verbose)
    finally:
        sim.stop()
    peaks = {("KEY_A" if k == KEY_A else "KEY_B" if k == KEY_B else k): v
             for k, v in run.stats["peak_running_by_key"].items()}
    by_key = {("KEY_A" if k == KEY_A else "KEY_B" if k == KEY_B else k): v
              for k, v in run.stats["tasks_by_key"].items()}
    print(f"   wall {run.wall:.2f} s, ideal {ideal:.0f} s (at most 5 at once) -> efficiency {ideal / run.wall:.3f} "
          f"(first submit to last save: {ideal / run.span:.3f})")
    print(f"   peak_running_by_key {peaks} (limits KEY_A 2, KEY_B 3); key_limit_refusals "
          f"{run.stats['key_limit_refusals']}; tasks_by_key {by_key}")
    print(f"   {describe(run)}")
    show_failures(run)
    if verbose:
        print(f"   worker logs: {', '.join(map(str, run.logs))}")


def timed_status(root: Path, env: Mapping[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ledger", "status"], cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def scenario_4() -> None:
    n, g, workers = 600, 2.0, 4
    print(f"4. `ledger status` while {workers} workers x concurrency 16 work N={n}, G={g:.0f}s on PostgreSQL")
    sim = Simulator(g)
    root = bench_project(n, "ledger-team-bench-")
    try:
        with pg_database() as db:
            env = {**{k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}, **sim.env(),
                   "GEN_COUNT_PER_SEGMENT": "1", "LEDGER_DATABASE_URL": db}
            subprocess.run([sys.executable, "-m", "ledger", "scan"], cwd=root, env=env, check=True, capture_output=True)
            idle = sorted(timed_status(root, env) for _ in range(5))
            procs = [subprocess.Popen([sys.executable, "-m", "ledger", "work", "--concurrency", "16", "--no-progress"],
                                      cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(workers)]
            time.sleep(3.0)  # the workers are claiming, creating and polling
            busy = sorted(timed_status(root, env) for _ in range(5))
            for proc in procs:
                proc.wait()
            (done,), = query(db, root, "SELECT count(*) FROM jobs WHERE state = 'done'")
    finally:
        sim.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"   baseline, no worker running   : median {idle[2]:.2f} s, worst {idle[-1]:.2f} s")
    print(f"   {workers} workers running      : median {busy[2]:.2f} s, worst {busy[-1]:.2f} s "
          f"({busy[2] / idle[2]:.2f}x the baseline); {done}/{n} done, worker exits "
          f"{','.join(str(p.returncode) for p in procs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="1234", help="which scenarios to run, e.g. 12")
    parser.add_argument("--n", type=int, default=600, help="jobs in scenario 1")
    parser.add_argument("--verbose", action="store_true", help="run the workers with -v (logs kept in temp dirs)")
    args = parser.parse_args()
    print(f"team benchmark ({os.cpu_count()} cores); the simulator runs as a separate process (scenario 3: in this "
          f"one), every worker its own `ledger work` process\n")
    if "1" in args.only:
        scenario_1(args.n, args.verbose)
    if "2" in args.only:
        scenario_2(args.verbose)
    if "3" in args.only:
        scenario_3(args.verbose)
    if "4" in args.only:
        scenario_4()


if __name__ == "__main__":
    main()
