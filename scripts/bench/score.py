"""Benchmark `amlpromote score` against `mlflow models predict --env-manager local`.

On demand only (not part of the test suite):

    .venv/bin/python scripts/bench/score.py [--rows 1000000,10000000] [--skip-spark]
        [--online-rows 200000]

Both score the same model (the UCI heart pipeline of tests/support/models.py, saved with
mlflow.sklearn.save_model) in this environment, on the same generated CSV (the heart features
repeated). Timed from the command's start to its exit, imports and model loading included.
Peak memory is the highest sum of the resident memory of the command's whole process tree
(the local engine's workers count), sampled every 20 ms from /proc.

Goals (issue 11): local engine at 10M rows >= 2x mlflow's rows/s and <= 1/5 of its peak
memory, our peak about flat from 1M to 10M rows; the online client against a local endpoint
>= 5x the rows/s of one 100-row request at a time sent sequentially. Spark (local[2]) rows/s
beside the local engine, for scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds copy.py: keep it behind the standard library (see startup.py).
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_HERE)] + [_HERE]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import _benchlib as lib  # noqa: E402
import serve  # noqa: E402  (the heart model and the local endpoint of the serve benchmark)

HEART_FEATURES = lib.REPO / "examples" / "heart" / "heart-unlabeled-0.csv"


@dataclass
class Timed:
    seconds: float
    peak_mib: float
    code: int
    stderr: str


def _tree_rss_kib(root: int) -> int:
    """Resident KiB of `root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def run_tree(cmd: list[str], env: dict[str, str], cwd: Path) -> Timed:
    started = time.perf_counter()
    with open(cwd / "stderr.txt", "w+b") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Timed(seconds, peak / 1024, proc.returncode, text)


def make_csv(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    base = pacsv.read_csv(HEART_FEATURES)
    chunk = pa.concat_tables([base] * max(1, 100_000 // base.num_rows))
    with pacsv.CSVWriter(path, chunk.schema) as writer:
        written = 0
        while written < rows:
            part = chunk.slice(0, min(chunk.num_rows, rows - written))
            writer.write_table(part)
            written += part.num_rows


def check_same(ours: Path, theirs: Path, rows: int) -> None:
    """Both answered the same predictions (the first 100,000 rows are compared)."""
    import pyarrow.parquet as pq

    mine = pq.read_table(ours, columns=["prediction"]).column(0).to_pylist()
    if len(mine) != rows:
        raise SystemExit(f"amlpromote score wrote {len(mine)} rows, not {rows}")
    with open(theirs) as handle:
        document = json.load(handle)
    predictions = document["predictions"] if isinstance(document, dict) else document
    if len(predictions) != rows or mine[:100_000] != predictions[:100_000]:
        raise SystemExit("amlpromote score and mlflow models predict disagree")


def bench_files(root: Path, model: Path, sizes: list[int], spark: bool) -> tuple[list, list]:
    env = lib.child_env(root)
    env["PATH"] = f"{lib.VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    rows_out: list[list[object]] = []
    results: dict[tuple[str, int], Timed] = {}
    for rows in sizes:
        data = root / f"heart-{rows}.csv"
        make_csv(data, rows)
        size_mb = data.stat().st_size / lib.MIB
        runs = {
            "mlflow models predict": [str(lib.VENV_BIN / "mlflow"), "models", "predict", "-m",
                                      str(model), "-i", str(data), "-t", "csv", "-o",
                                      str(root / "mlflow-out.json"), "--env-manager", "local"],
            "amlpromote score (local engine)": [
                str(lib.VENV_BIN / "amlpromote"), "score", "--model", str(model), "--input",
                str(data), "--output", str(root / "ours.parquet"), "-q"],
        }
        if spark:
            runs["amlpromote score --engine spark local[2]"] = [
                str(lib.VENV_BIN / "amlpromote"), "score", "--model", str(model), "--input",
                str(data), "--output", str(root / "spark-out.parquet"), "--engine", "spark",
                "--spark-master", "local[2]", "-q"]
        for name, cmd in runs.items():
            lib.wait_for_quiet(timeout=30)
            timed = run_tree(cmd, env, root)
            if timed.code != 0:
                raise SystemExit(f"{name} failed on {rows} rows:\n{timed.stderr[-2000:]}")
            results[(name, rows)] = timed
            rows_out.append([f"{rows:,} rows ({size_mb:.0f} MB CSV)", name,
                             f"{timed.seconds:.1f}", f"{rows / timed.seconds:,.0f}",
                             f"{timed.peak_mib:,.0f}"])
            print(f"  measured {name}, {rows:,} rows", flush=True)
        check_same(root / "ours.parquet", root / "mlflow-out.json", rows)
        data.unlink()
    goals = []
    top = max(sizes)
    ours, theirs = (results[("amlpromote score (local engine)", top)],
                    results[("mlflow models predict", top)])
    speed = theirs.seconds / ours.seconds
    memory = ours.peak_mib / theirs.peak_mib
    goals.append((f"local engine at {top:,} rows: rows/s {speed:.2f}x mlflow (goal >= 2x)",
                  speed >= 2))
    goals.append((f"local engine at {top:,} rows: peak memory {memory:.2f} of mlflow's "
                  "(goal <= 0.2)", memory <= 0.2))
    if len(sizes) > 1:
        low = results[("amlpromote score (local engine)", min(sizes))]
        growth = ours.peak_mib / low.peak_mib
        goals.append((f"local engine peak memory {min(sizes):,} -> {top:,} rows: "
                      f"{growth:.2f}x (goal: about flat, <= 1.5x)", growth <= 1.5))
    return rows_out, goals


def bench_online(root: Path, model: Path, rows: int) -> tuple[list, list]:
    import pandas as pd

    frame = pd.read_csv(HEART_FEATURES)
    big = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).head(rows)
    data = root / "online.csv"
    big.to_csv(data, index=False)
    first = json.dumps({"input_data": frame.head(1).to_dict(orient="split")}).encode()
    table: list[list[object]] = []
    with serve.local_endpoint(root, model, first) as target:
        lib.wait_for_quiet(timeout=30)
        # The baseline: one 100-row request at a time, one keep-alive connection.
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
        started = time.perf_counter()
        for start in range(0, rows, 100):
            body = json.dumps({"input_data": big.iloc[start:start + 100].to_dict(
                orient="split")}).encode()
            serve.post(connection, target, body)
        sequential = rows / (time.perf_counter() - started)
        connection.close()
        table.append([f"{rows:,} rows", "one 100-row request at a time", f"{sequential:,.0f}"])
        env = lib.child_env(root)
        env["AMLPROMOTE_DATA_DIR"] = os.environ["AMLPROMOTE_DATA_DIR"]
        ratios = []
        for args in ([], ["--batch-size", "100", "--concurrency", "4"]):
            lib.wait_for_quiet(timeout=30)
            timed = run_tree([str(lib.VENV_BIN / "amlpromote"), "score", "--endpoint", "bench",
                              "--local", "--input", str(data), "--output",
                              str(root / "online-out.parquet"), "-q", *args], env, root)
            if timed.code != 0:
                raise SystemExit(f"score --endpoint failed:\n{timed.stderr[-2000:]}")
            rate = rows / timed.seconds
            ratios.append(rate / sequential)
            table.append([f"{rows:,} rows", "amlpromote score --endpoint " + (
                " ".join(args) or "(defaults: --batch-size 2000 --concurrency 4)"),
                          f"{rate:,.0f}"])
            print(f"  measured online {' '.join(args)}", flush=True)
    goals = [(f"online client (its defaults, the whole command): {ratios[0]:.2f}x the "
              "sequential 100-row client (goal >= 5x)", ratios[0] >= 5)]
    return table, goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark amlpromote score.")
    parser.add_argument("--rows", default="1000000,10000000",
                        help="comma-separated input sizes for the file benchmarks")
    parser.add_argument("--online-rows", type=int, default=200_000)
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--only-online", action="store_true",
                        help="skip the file benchmarks")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",") if x.strip()]
    try:
        import pyspark  # noqa: F401

        spark = not args.skip_spark
    except ImportError:
        spark = False
    threading.current_thread().name = "bench"
    print(f"amlpromote score vs mlflow models predict --env-manager local: heart pipeline, "
          f"{os.cpu_count()} CPUs; whole commands, imports and model loading included")
    with lib.temp_root("amlpromote-score-bench-") as root:
        model = serve.save_heart_model(root)
        goals: list[tuple[str, bool]] = []
        if not args.only_online:
            files, goals = bench_files(root, model, sizes, spark)
            print()
            print(lib.table(["input", "command", "seconds", "rows/s", "peak MiB (tree)"],
                            files))
        os.environ["AMLPROMOTE_DATA_DIR"] = str(root / "amlpromote-data")
        online, more = bench_online(root, model, args.online_rows)
        print()
        print(lib.table(["input", "client", "rows/s"], online))
        goals += more
    print()
    for what, ok in goals:
        print(f"{lib.verdict(ok)}  {what}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
