"""Benchmark the local online endpoint against `mlflow models serve --env-manager local`.

On demand only (not part of the test suite):

    .venv/bin/python scripts/bench/serve.py [--rounds 5] [--requests 200] [--concurrency 8]

Both serve the same model (the UCI heart pipeline of tests/support/models.py, saved with
mlflow.sklearn.save_model) in this environment. Payloads: 1 row and 1,000 rows of the heart
features, split orientation (`{"input_data": ...}` for the local endpoint, Azure ML's contract;
`{"dataframe_split": ...}` for mlflow's). Clients: one sequential keep-alive connection, and
--concurrency threads with one keep-alive connection each. Both servers answer the same
predictions (checked). The client is http.client, the leanest in the standard library, so its
own cost (shared with the servers on a small machine) hides as little as possible of theirs.

Goals: local endpoint requests/s at least 2x mlflow's on 1-row requests and at least 1x on
1,000-row requests, p99 no worse. Also timed: from process start to the first answer (the local
endpoint: create_endpoint + create_deployment + set_traffic + first score).

Also printed: the model's own time per request (its predict call, which the local endpoint logs
for each answer) against mlflow's p50. A server that runs the model per request, as both do and
as Azure ML's MLflow scoring does, pays that time whatever else it saves, so mlflow's p50 over it
is the most any such server could gain on this machine.

The machine is shared: before each measurement the benchmark waits for it to go idle; rounds
alternate the two servers and the medians are reported. Servers and temp files are removed at
the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds copy.py: keep it behind the standard library (see startup.py).
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_HERE)] + [_HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import _benchlib as lib  # noqa: E402

HEART_FEATURES = lib.REPO / "examples" / "heart" / "heart-unlabeled-0.csv"
ROWS = (1, 1000)


@dataclass
class Target:
    """One server under test: where to POST, with which headers, and how bodies are wrapped."""

    name: str
    port: int
    path: str
    headers: dict[str, str]
    wrap: str  # the top-level key of the request body
    started_to_first_answer: float = 0.0
    # The model's own time (seconds) in the last `n` answers, where the server logs it.
    model_times: Callable[[int], list[float]] | None = None

    def body(self, split: dict[str, object]) -> bytes:
        return json.dumps({self.wrap: split}).encode()


@dataclass
class Run:
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


def post(connection: http.client.HTTPConnection, target: Target, body: bytes) -> bytes:
    connection.request("POST", target.path, body=body, headers=target.headers)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{target.name} answered {response.status}: {data[:300]!r}")
    return data


def measure(target: Target, body: bytes, requests: int, concurrency: int) -> Run:
    """`requests` POSTs in total over `concurrency` keep-alive connections."""
    per_client = max(1, requests // concurrency)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(concurrency + 1)

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=60)
        try:
            post(connection, target, body)  # connect and warm outside the clock
            barrier.wait()
            mine = latencies[slot]
            for _ in range(per_client):
                started = time.perf_counter()
                post(connection, target, body)
                mine.append(time.perf_counter() - started)
        except BaseException as exc:
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return Run(seconds, [x for slot in latencies for x in slot])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------------------------
# The model and the servers


def save_heart_model(root: Path) -> Path:
    sys.path.insert(0, str(lib.REPO / "tests"))
    import mlflow.sklearn
    from support.models import trained_heart_model

    model = trained_heart_model()
    path = root / "heart-model"
    mlflow.sklearn.save_model(model.pipeline, str(path), signature=model.signature,
                              input_example=model.example,
                              pip_requirements=list(model.pip_requirements))
    return path


def wait_first_answer(target: Target, body: bytes, started: float, timeout: float,
                      proc: subprocess.Popen[bytes] | None = None) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {proc.returncode}")
        connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=5)
        try:
            post(connection, target, body)
            return time.perf_counter() - started
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            connection.close()
    raise RuntimeError(f"{target.name} gave no answer in {timeout:.0f}s")


@contextlib.contextmanager
def mlflow_serve(root: Path, model: Path, body: bytes) -> Iterator[Target]:
    port = lib.free_port()
    env = lib.child_env(root)
    # mlflow execs `uvicorn` by name: it must find the venv's.
    env["PATH"] = f"{lib.VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    log = (root / "mlflow-serve.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([str(lib.VENV_BIN / "mlflow"), "models", "serve", "--env-manager",
                             "local", "-m", str(model), "-p", str(port), "--host", "127.0.0.1"],
                            env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    target = Target("mlflow models serve", port, "/invocations",
                    {"Content-Type": "application/json"}, "dataframe_split")
    try:
        target.started_to_first_answer = wait_first_answer(target, body, started, 180, proc)
        yield target
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
                break
        log.close()


@contextlib.contextmanager
def local_endpoint(root: Path, model: Path, body: bytes) -> Iterator[Target]:
    os.environ["AMLPROMOTE_DATA_DIR"] = str(root / "amlpromote-data")
    sys.path.insert(0, str(lib.REPO))
    from amlpromote.core.deploy.local.platform import LocalPlatform
    from amlpromote.core.deploy.platform import DeploymentSpec, ModelVersion, no_progress

    platform = LocalPlatform()
    started = time.perf_counter()
    info = platform.create_endpoint("bench", "key", no_progress, time.monotonic() + 60)
    try:
        platform.create_deployment(
            DeploymentSpec("bench", "blue", ModelVersion("heart", "1", "bench", path=str(model))),
            no_progress, time.monotonic() + 180)
        platform.set_traffic("bench", {"blue": 100}, {}, no_progress, time.monotonic() + 30)
        port = int(info.scoring_uri.rsplit(":", 1)[1].split("/", 1)[0])
        target = Target("local endpoint", port, "/score",
                        {"Content-Type": "application/json",
                         "Authorization": f"Bearer {platform.get_key('bench')}"}, "input_data")

        def model_times(n: int) -> list[float]:
            # Each answer's log line: "POST /score 200 9.577ms (model 8.471ms) 3 bytes".
            lines = platform.get_logs("bench", "blue", tail=n).splitlines()
            return [float(m.group(1)) / 1e3 for line in lines
                    if (m := re.search(r"POST /score 200 .*\(model ([0-9.]+)ms\)", line))]

        target.model_times = model_times
        target.started_to_first_answer = wait_first_answer(target, body, started, 60)
        yield target
    finally:
        platform.delete_endpoint("bench", no_progress, time.monotonic() + 30)


def deploy_command_to_first_answer(root: Path, body: bytes) -> float:
    """`amlpromote deploy NAME/1 --local` from a registry, timed from the command's start to
    the first answer of a client (preflight, fetch into the cache, server start, model load,
    smoke test, traffic; then one request). The endpoint is deleted afterwards."""
    sys.path.insert(0, str(lib.REPO / "tests"))
    from support.models import register_heart_model

    registry = f"sqlite:///{root / 'deploy-registry' / 'mlflow.db'}"
    (root / "deploy-registry").mkdir(exist_ok=True)
    with contextlib.chdir(root):
        register_heart_model(registry, "bench-heart", alias=None)
    env = lib.child_env(root)
    env["AMLPROMOTE_DATA_DIR"] = str(root / "deploy-data")
    cli = [str(lib.VENV_BIN / "amlpromote")]
    started = time.perf_counter()
    done = subprocess.run([*cli, "deploy", "bench-heart/1", "--endpoint", "bench-cli",
                           "--target", registry, "-o", "json"], env=env, cwd=root,
                          capture_output=True, text=True, check=False)
    try:
        if done.returncode != 0:
            raise SystemExit(f"deploy --local failed:\n{done.stdout}{done.stderr}")
        uri = json.loads(done.stdout)["scoring_uri"]
        key = subprocess.run([*cli, "endpoints", "keys", "bench-cli", "--local"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        port = int(uri.rsplit(":", 1)[1].split("/", 1)[0])
        target = Target("deploy --local", port, "/score",
                        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
                        "input_data")
        return wait_first_answer(target, body, started, 60)
    finally:
        subprocess.run([*cli, "endpoints", "delete", "bench-cli", "--local"], env=env,
                       capture_output=True, check=False)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the local online endpoint.")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per measurement with 1-row payloads (a tenth with 1,000)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quiet-timeout", type=float, default=20.0,
                        help="seconds to wait, before each measurement, for other processes to "
                             "go idle")
    parser.add_argument("--only", metavar="ROWSxCLIENTS", action="append", default=[],
                        help="measure only these cases, e.g. --only 1x1 (repeatable; the start "
                             "times are then skipped)")
    args = parser.parse_args(argv)
    cases = [(rows, clients) for rows in ROWS for clients in (1, args.concurrency)]
    if args.only:
        wanted = {tuple(int(n) for n in case.lower().split("x", 1)) for case in args.only}
        cases = [case for case in cases if case in wanted]
        if not cases:
            parser.error(f"--only takes ROWSxCLIENTS among "
                         f"{', '.join(f'{r}x{c}' for r in ROWS for c in (1, args.concurrency))}")

    import pandas as pd

    frame = pd.read_csv(HEART_FEATURES)
    splits = {rows: pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True)
              .head(rows).to_dict(orient="split") for rows in ROWS}
    print(f"local endpoint vs mlflow models serve --env-manager local: heart pipeline, "
          f"{args.rounds} alternating rounds (median), {os.cpu_count()} CPUs, "
          f"client http.client keep-alive")
    with lib.temp_root("amlpromote-serve-bench-") as root:
        model = save_heart_model(root)
        with contextlib.ExitStack() as stack:
            ours = stack.enter_context(local_endpoint(root, model, Target(
                "", 0, "", {}, "input_data").body(splits[1])))
            theirs = stack.enter_context(mlflow_serve(root, model, Target(
                "", 0, "", {}, "dataframe_split").body(splits[1])))
            for rows in ROWS:  # same answers, or the comparison means nothing
                answers = [json.loads(post(http.client.HTTPConnection("127.0.0.1", t.port), t,
                                           t.body(splits[rows]))) for t in (ours, theirs)]
                if answers[0] != answers[1]["predictions"]:
                    raise SystemExit(f"the servers disagree on {rows} rows")
            rows_out, goals = [], []
            bounds: list[list[str]] = []
            for rows, concurrency in cases:
                count = args.requests if rows == 1 else max(args.concurrency,
                                                            args.requests // 10)
                runs: dict[str, list[Run]] = {ours.name: [], theirs.name: []}
                model_seconds: list[float] = []
                for _ in range(args.rounds):
                    for target in (ours, theirs):
                        lib.wait_for_quiet(timeout=args.quiet_timeout)
                        runs[target.name].append(
                            measure(target, target.body(splits[rows]), count, concurrency))
                        if target.model_times is not None:
                            model_seconds += target.model_times(count)
                summary = {}
                for target in (ours, theirs):
                    pooled = [x for run in runs[target.name] for x in run.latencies]
                    summary[target.name] = (lib.median([r.rps for r in runs[target.name]]),
                                            percentile(pooled, 0.5), percentile(pooled, 0.99))
                mine, other = summary[ours.name], summary[theirs.name]
                ratio = mine[0] / other[0]
                goal = 2.0 if rows == 1 else 1.0
                label = f"{rows} row{'s' if rows > 1 else ''}, {concurrency} client" + (
                    "s" if concurrency > 1 else "")
                for target in (ours, theirs):
                    rps, p50, p99 = summary[target.name]
                    rows_out.append([label, target.name, f"{rps:.1f}", f"{p50 * 1e3:.2f}",
                                     f"{p99 * 1e3:.2f}"])
                rows_out.append([label, "ratio (local / mlflow)", f"{ratio:.2f}x",
                                 f"{mine[1] / other[1]:.2f}", f"{mine[2] / other[2]:.2f}"])
                goals.append((f"{label}: requests/s >= {goal:.0f}x mlflow", ratio >= goal))
                goals.append((f"{label}: p99 no worse than mlflow", mine[2] <= other[2]))
                if model_seconds:
                    # Any server that runs the model per request pays its predict time: with
                    # none of its own, it could answer at most this much faster than mlflow.
                    model_p50 = statistics.median(model_seconds)
                    bounds.append([label, f"{model_p50 * 1e3:.2f}", f"{other[1] * 1e3:.2f}",
                                   f"{other[1] / model_p50:.2f}x"])
                print(f"  measured {label}", flush=True)
            print()
            print(lib.table(["payload, clients", "server", "requests/s", "p50 ms", "p99 ms"],
                            rows_out))
            print()
            if bounds:
                print("the model's own time (predict, logged by the local endpoint) bounds any "
                      "server's gain:")
                print(lib.table(["payload, clients", "model p50 ms", "mlflow p50 ms",
                                 "mlflow p50 / model p50"], bounds))
                print()
            if args.only:
                return _verdicts(goals)
            lib.wait_for_quiet(timeout=args.quiet_timeout)
            command = deploy_command_to_first_answer(root, Target(
                "", 0, "", {}, "input_data").body(splits[1]))
            starts = [[t.name, f"{t.started_to_first_answer:.2f}"] for t in (ours, theirs)]
            starts.append(["amlpromote deploy --local (the whole command: registry, preflight, "
                           "cache, server, smoke test)", f"{command:.2f}"])
            print(lib.table(["server", "start to first answer s"], starts))
            ratio = command / theirs.started_to_first_answer
            print(f"  deploy --local / mlflow models serve start: {ratio:.2f}x")
    return _verdicts(goals)


def _verdicts(goals: list[tuple[str, bool]]) -> int:
    print()
    for what, ok in goals:
        print(f"{lib.verdict(ok)}  {what}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
