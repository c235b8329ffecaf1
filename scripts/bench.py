#!/usr/bin/env python3
"""The lineitem benchmark: strata against DuckDB doing the same job, side by side.

Run through ./scripts/bench.sh (or `just bench`), which installs tpchgen-cli and duckdb from PyPI
into a virtualenv and builds strata in release mode. Prints, for each tool, the median wall time,
peak RSS and rows per second over several alternating runs, and strata's ratio to DuckDB; then the
one-day incremental run after 10 and after 1,000 days of history, and `strata diff` of a one-day
change in 1,000 daily partitions against a diff that reads them all.
"""

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_measured(cmd, cwd, env=None):
    """Runs cmd; returns (seconds, peak RSS in bytes of the process tree's largest member)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    out = proc.stdout.read().decode(errors="replace")
    err = proc.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"bench: {' '.join(map(str, cmd))} failed with {code}:\n{out}\n{err}")
    return elapsed, usage.ru_maxrss * 1024, out


def generate_lineitem(venv, sf, work):
    data = work / "data"
    csv = data / "lineitem.csv"
    if csv.exists():
        return csv
    data.mkdir(parents=True, exist_ok=True)
    print(f"generating TPC-H lineitem at scale factor {sf} ...", flush=True)
    subprocess.run([str(venv / "bin" / "tpchgen-cli"), "csv", "-s", str(sf), "--tables", "lineitem",
                    "--output-dir", str(data)], check=True)
    return csv


def count_rows(csv):
    with open(csv, "rb") as f:
        return sum(1 for _ in f) - 1


def lineitem(args, strata, venv):
    work = Path(args.dir) / f"sf{args.sf}"
    work.mkdir(parents=True, exist_ok=True)
    csv = generate_lineitem(venv, args.sf, work)
    rows = count_rows(csv)
    for name in ["strata.toml", "models", "lineitem.sql"]:
        src = ROOT / "testdata" / "lineitem" / name
        dst = work / name
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    py = str(venv / "bin" / "python")
    duck_script = "import duckdb, sys; duckdb.connect().execute(open('lineitem.sql').read())"
    results = {"strata": [], "duckdb": []}
    for i in range(args.runs):
        order = ["strata", "duckdb"] if i % 2 == 0 else ["duckdb", "strata"]
        for tool in order:
            if tool == "strata":
                lake = work / "lake"
                shutil.rmtree(lake, ignore_errors=True)
                secs, rss, _ = run_measured([strata, "run", "--pipeline", "strata.toml", "--lake", str(lake)], work)
            else:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                secs, rss, _ = run_measured([py, "-c", duck_script], work)
            results[tool].append((secs, rss))
            print(f"  run {i + 1}: {tool:<6} {secs:7.2f} s  {rss / 2**20:7.0f} MiB", flush=True)
    med = {t: (statistics.median(s for s, _ in r), max(m for _, m in r)) for t, r in results.items()}
    print()
    print(f"lineitem, scale factor {args.sf}: {rows:,} rows, {csv.stat().st_size / 2**20:.0f} MiB of CSV; "
          f"median of {args.runs} alternating runs on {os.cpu_count()} cores")
    print()
    print("| tool | wall time | peak RSS | rows/s | time vs DuckDB |")
    print("|---|---|---|---|---|")
    for tool in ["strata", "duckdb"]:
        secs, rss = med[tool]
        ratio = secs / med["duckdb"][0]
        print(f"| {tool} | {secs:.2f} s | {rss / 2**20:.0f} MiB | {rows / secs / 1e6:.2f} M | {ratio:.2f}x |")
    print()


class History:
    """A lake fed by a daily pipeline: one CSV file of events per business day."""

    def __init__(self, work, seed, rows_per_day):
        self.work, self.rng, self.rows_per_day = work, random.Random(seed), rows_per_day
        # Days written so far (a history kept with --reuse-history goes on from its last day).
        self.days = len(list((work / "data").glob("*.csv")))

    def run_day(self, strata):
        """Writes the next day's file and runs the pipeline for that day; returns (seconds, RSS)."""
        import datetime
        d = self.days
        self.days += 1
        day = datetime.date(2020, 1, 1) + datetime.timedelta(days=d)
        with open(self.work / "data" / f"events-{day}.csv", "w") as f:
            f.write("event_id,event_date,account,amount\n")
            for i in range(self.rows_per_day):
                f.write(f"{d * self.rows_per_day + i + 1},{day},{self.rng.randrange(1000)},"
                        f"{self.rng.randrange(100000) / 100:.2f}\n")
        secs, rss, _ = run_measured(
            [strata, "run", "--pipeline", "strata.toml", "--lake", str(self.work / "lake"),
             "--date", str(day)], self.work)
        return secs, rss


def incremental(args, strata):
    """A one-day run after `days` days of history, for 10 and 1,000 days."""
    print(f"incremental: one new day after N days of history ({args.rows_per_day} rows/day), "
          f"median of {args.runs} runs")
    print()
    print("| days of history | one-day run | peak RSS |")
    print("|---|---|---|")
    # Both histories first, then the one-day runs of the two lakes taking turns, so that a
    # change in the host's speed hits both alike.
    lakes = {}
    for days in [10, 1000]:
        work = Path(args.dir) / f"events-{days}"
        if not (args.reuse_history and (work / "lake").is_dir()):
            shutil.rmtree(work, ignore_errors=True)
            (work / "data").mkdir(parents=True)
            shutil.copy(ROOT / "testdata" / "events" / "strata.toml", work / "strata.toml")
            shutil.copytree(ROOT / "testdata" / "events" / "models", work / "models")
        lakes[days] = History(work, days, args.rows_per_day)
        # The history as a daily pipeline makes it: one run per day, each landing that day's
        # file (so the lake holds `days` runs, versions and pointer entries, not one big run).
        while lakes[days].days < days:
            lakes[days].run_day(strata)
    samples = {days: [] for days in lakes}
    for r in range(args.runs):
        for days, history in lakes.items():
            samples[days].append(history.run_day(strata))
    times = {}
    for days, got in samples.items():
        secs = statistics.median(s for s, _ in got)
        times[days] = secs
        print(f"| {days} | {secs:.3f} s | {max(m for _, m in got) / 2**20:.0f} MiB |")
    print()
    print(f"ratio 1,000 days / 10 days: {times[1000] / times[10]:.2f}x (target <= 1.2x)")
    print()


def diff_bench(args, strata, venv):
    """`strata diff` of a one-day change in 1,000 daily partitions: the fast path (partitions
    with equal row hashes unread) against a diff that reads every partition (`--where TRUE`)."""
    days, per_day = 1000, args.rows_per_day
    work = Path(args.dir) / "diff"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    py = str(venv / "bin" / "python")
    script = f"""
import duckdb
duckdb.sql(\"\"\"COPY (SELECT i AS id, DATE '2020-01-01' + CAST(i // {per_day} AS INTEGER) AS day,
  CAST(i % 997 AS DOUBLE) * 1.5 AS amount FROM range({days * per_day}) t(i))
  TO '{work}/v1.parquet' (FORMAT parquet)\"\"\")
duckdb.sql(\"\"\"COPY (SELECT id, day, CASE WHEN id % 10 = 0 THEN amount + 1 ELSE amount END AS amount
  FROM '{work}/v1.parquet' WHERE day = DATE '2020-06-01') TO '{work}/day.parquet' (FORMAT parquet)\"\"\")
"""
    subprocess.run([py, "-c", script], check=True)
    lake = str(work / "lake")
    run_measured([strata, "--lake", lake, "publish", "t", "--from", str(work / "v1.parquet"),
                  "--partition-by", "day"], work)
    run_measured([strata, "--lake", lake, "publish", "t", "--from", str(work / "day.parquet"),
                  "--partition-by", "day"], work)

    def diff(extra):
        cmd = [strata, "--lake", lake, "diff", "t@1", "t@2", "--key", "id",
               "--max-changed-rows", str(per_day)] + extra
        return run_measured(cmd, work)

    samples = {"one day read (fast path)": [], "every partition read (--where TRUE)": []}
    for _ in range(args.runs):
        samples["one day read (fast path)"].append(diff([]))
        samples["every partition read (--where TRUE)"].append(diff(["--where", "TRUE"]))
    print(f"diff: a one-day change in {days} daily partitions ({per_day} rows/day), "
          f"median of {args.runs} runs")
    print()
    print("| strata diff | wall time | peak RSS |")
    print("|---|---|---|")
    for name, got in samples.items():
        secs = statistics.median(s for s, _, _ in got)
        print(f"| {name} | {secs:.3f} s | {max(m for _, m, _ in got) / 2**20:.0f} MiB |")
    print()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sf", default=os.environ.get("STRATA_BENCH_SF", "1"), help="TPC-H scale factor (default 1)")
    p.add_argument("--runs", type=int, default=int(os.environ.get("STRATA_BENCH_RUNS", "3")))
    p.add_argument("--dir", default=os.environ.get("STRATA_BENCH_DIR", str(Path.home() / ".cache" / "strata" / "bench")))
    p.add_argument("--strata", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--rows-per-day", type=int, default=1000)
    p.add_argument("--only", choices=["lineitem", "incremental", "diff"], default=None)
    p.add_argument("--reuse-history", action="store_true",
                   help="keep the incremental lakes of an earlier run and go on from their last day")
    args = p.parse_args()
    venv = Path(args.venv)
    if args.only in (None, "lineitem"):
        lineitem(args, args.strata, venv)
    if args.only in (None, "incremental"):
        incremental(args, args.strata)
    if args.only in (None, "diff"):
        diff_bench(args, args.strata, venv)


if __name__ == "__main__":
    main()
