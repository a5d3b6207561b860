"""Benchmark how fast `amlpromote --help` and `amlpromote copy-model --help` start.

On demand only (not part of the test suite):

    .venv/bin/python scripts/bench/startup.py [--runs 7]

Goals: each median under 0.3 s, and at least 5x faster than `mlflow --help`. Every command runs
once untimed first (warm page cache and .pyc files), then --runs times, interleaved, each after
the machine has gone idle (other processes share its CPUs).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds copy.py: move it behind the standard library so `import copy` (dataclasses
# does that) finds the real module, while _benchlib stays importable.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(_HERE)] + [_HERE]

import argparse  # noqa: E402

import _benchlib as lib  # noqa: E402

LIMIT_S = 0.3
MIN_RATIO = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark CLI start-up time.")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--quiet-timeout", type=float, default=20.0,
                        help="seconds to wait, before each run, for other processes to go idle")
    args = parser.parse_args(argv)

    commands = {
        "amlpromote --help": [str(lib.VENV_BIN / "amlpromote"), "--help"],
        "amlpromote copy-model --help": [str(lib.VENV_BIN / "amlpromote"), "copy-model",
                                         "--help"],
        "mlflow --help": [str(lib.VENV_BIN / "mlflow"), "--help"],
    }
    print(f"start-up benchmark: median of {args.runs} runs each (after one untimed warm-up), "
          "warm page cache")
    times: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, float] = {name: 0.0 for name in commands}
    with lib.temp_root("amlpromote-startup-") as root:
        env = lib.child_env(root)
        for name, cmd in commands.items():
            lib.check(lib.run_measured(cmd, env=env), name)
        for _ in range(args.runs):
            for name, cmd in commands.items():
                lib.wait_for_quiet(timeout=args.quiet_timeout)
                measured = lib.check(lib.run_measured(cmd, env=env), name)
                times[name].append(measured.seconds)
                rss[name] = max(rss[name], measured.max_rss_mib * lib.MIB / 1e6)

    mlflow_median = lib.median(times["mlflow --help"])
    rows = []
    for name in commands:
        median = lib.median(times[name])
        rows.append([name, f"{median:.3f}", f"{min(times[name]):.3f}", f"{max(times[name]):.3f}",
                     f"{mlflow_median / median:.1f}", f"{rss[name]:.0f}"])
    print(lib.table(["command", "median s", "min s", "max s", "mlflow / this", "peak RSS MB"],
                    rows))

    goals = []
    for name in ("amlpromote --help", "amlpromote copy-model --help"):
        median = lib.median(times[name])
        goals.append((f"{name}: median {median:.3f} s < {LIMIT_S} s", median < LIMIT_S))
        goals.append((f"{name}: {mlflow_median / median:.1f}x faster than mlflow --help "
                      f"({mlflow_median:.3f} s), goal {MIN_RATIO:.0f}x",
                      mlflow_median / median >= MIN_RATIO))
    print("\ngoals")
    for text, ok in goals:
        print(f"  {lib.verdict(ok)}  {text}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
