"""The service benchmark on two versions of the code, side by side in one run.

Usage: ``python benchmarks/side_by_side.py --before REF [--repeats 2]
[--out benchmarks/results/service_side_by_side.json] [-- BENCH_SERVICE_ARGUMENTS ...]``

Checks ``REF`` out into a temporary git worktree, then runs this tree's ``benchmarks/bench_service.py``
(the same alerts, arguments and measurement) alternately against the package of ``REF`` and of this
tree (``PYTHONPATH``), ``--repeats`` times in rotated order, so that the drift of a shared machine hits
both alike. Writes every run's rows and, per model row, the medians of both versions and the median of
the paired ratios after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("alerts_per_second", "p50_s", "p99_s")


def _rev(ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def _metrics(row: dict) -> dict[str, float | None]:
    lat = row["latency_at_rate"]
    return {"alerts_per_second": row["throughput"]["alerts_per_second"], "p50_s": lat["p50_s"],
            "p99_s": lat["p99_s"]}  # fmt: skip


def run_bench(package: Path, bench_args: list[str], out: Path) -> list[dict]:
    """One run of this tree's service benchmark with ``package`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_service.py"), *bench_args, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return json.loads(out.read_text())["results"]


def summarise(runs: dict[str, list[list[dict]]]) -> list[dict]:
    """Per model row: both versions' medians and the median paired ratio after / before."""
    out = []
    for i, first in enumerate(runs["after"][0]):
        row: dict = {"model": first["model"]}
        for key in METRICS:
            values = {v: [_metrics(r[i])[key] for r in runs[v]] for v in ("before", "after")}
            for version, found in values.items():
                kept = [x for x in found if x is not None]
                row[f"{key}_{version}"] = round(float(np.median(kept)), 3) if kept else None
            ratios = [a / b for a, b in zip(values["after"], values["before"], strict=True) if a and b]
            row[f"{key}_ratio"] = round(float(np.median(ratios)), 3) if ratios else None
        out.append(row)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git ref of the code to compare with")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "service_side_by_side.json"
    )
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: bench_service.py arguments")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    runs: dict[str, list[list[dict]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=ROOT, check=True)
        try:
            for repeat in range(args.repeats):
                order = [("before", tree), ("after", ROOT)]
                for version, package in order if repeat % 2 == 0 else order[::-1]:
                    runs[version].append(
                        run_bench(package, bench_args, Path(tmp) / f"{version}-{repeat}.json")
                    )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    result = {
        "benchmark": "service end to end, two code versions side by side",
        "command": " ".join(["python", "benchmarks/side_by_side.py", *sys.argv[1:]]),
        "before": _rev(args.before), "after": _rev("HEAD"), "repeats": args.repeats,
        "summary": summarise(runs), "runs": runs,
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
