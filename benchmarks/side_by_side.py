"""A benchmark on two versions of the code, side by side in one run.

Usage: ``python benchmarks/side_by_side.py --before REF [--bench service|decode] [--repeats 2]
[--out benchmarks/results/<bench>_side_by_side.json] [-- BENCHMARK_ARGUMENTS ...]``

Checks ``REF`` out into a temporary git worktree, then runs this tree's benchmark script
(``bench_service.py`` or ``bench_decode.py``: the same alerts, arguments and measurement) alternately
against the package of ``REF`` and of this tree (``PYTHONPATH``), ``--repeats`` times in rotated order,
so that the drift of a shared machine hits both alike. Writes every run's metrics and, per row (a model
of the service benchmark, a survey of the decode benchmark), the medians of both versions and the median
of the paired ratios after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: Rows of ``{metric: value}`` from one result file, per benchmark.
Extract = Callable[[dict], dict[str, dict[str, float | None]]]


def _service(result: dict) -> dict[str, dict[str, float | None]]:
    rows = {}
    for row in result["results"]:
        latency = row["latency_at_rate"]
        rows[row["model"]] = {
            "alerts_per_second": row["throughput"]["alerts_per_second"],
            "p50_s": latency["p50_s"],
            "p99_s": latency["p99_s"],
        }
    return rows


def _decode(result: dict) -> dict[str, dict[str, float | None]]:
    return {
        survey: {
            "alerts_per_cpu_second": result[survey]["alerts_per_cpu_second"],
            "avro_decode_ms": result[survey]["ms_per_alert"]["avro_decode"],
            "stamp_normalise_ms": result[survey]["ms_per_alert"]["stamp_normalise"],
        }
        for survey in ("rubin", "ztf")
    }


BENCHES: dict[str, tuple[str, Extract]] = {
    "service": ("bench_service.py", _service),
    "decode": ("bench_decode.py", _decode),
}


def _rev(ref: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_bench(script: str, package: Path, bench_args: list[str], out: Path) -> dict:
    """One run of this tree's benchmark ``script`` with ``package`` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    command = [sys.executable, str(ROOT / "benchmarks" / script), *bench_args, "--out", str(out)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return json.loads(out.read_text())


def summarise(runs: dict[str, list[dict[str, dict[str, float | None]]]]) -> list[dict]:
    """Per row: both versions' medians and the median paired ratio after / before, per metric."""
    out = []
    for name, metrics in runs["after"][0].items():
        row: dict = {"row": name}
        for key in metrics:
            values = {v: [r[name][key] for r in runs[v]] for v in ("before", "after")}
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
    parser.add_argument("--bench", choices=sorted(BENCHES), default="service")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default benchmarks/results/<bench>_side_by_side.json")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the benchmark's arguments")
    args = parser.parse_args()
    script, extract = BENCHES[args.bench]
    out_path = args.out or ROOT / "benchmarks" / "results" / f"{args.bench}_side_by_side.json"
    bench_args = [a for a in args.bench_args if a != "--"]
    runs: dict[str, list[dict[str, dict[str, float | None]]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.before], cwd=ROOT, check=True)
        try:
            for repeat in range(args.repeats):
                order = [("before", tree), ("after", ROOT)]
                for version, package in order if repeat % 2 == 0 else order[::-1]:
                    result = run_bench(script, package, bench_args, Path(tmp) / f"{version}-{repeat}.json")
                    runs[version].append(extract(result))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    result = {
        "benchmark": f"{script}, two code versions side by side",
        "command": " ".join(["python", "benchmarks/side_by_side.py", *sys.argv[1:]]),
        "before": _rev(args.before), "after": _rev("HEAD"), "repeats": args.repeats,
        "summary": summarise(runs), "runs": runs,
    }  # fmt: skip
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
