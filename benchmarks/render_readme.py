"""Write the generated tables (settings, benchmark results) between their markers in README.md.

Usage: ``python benchmarks/render_readme.py`` (``--check`` exits 1 if the README is not current).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from broker_plugin.config import settings_markdown

ROOT = Path(__file__).resolve().parents[1]


def decode_table() -> str:
    path = ROOT / "benchmarks" / "results" / "decode.json"
    if not path.exists():
        return "(not measured yet)"
    result = json.loads(path.read_text())
    lines = [
        "| alerts | alerts / core-second | Avro decode [ms] | stamp normalise [ms] | total [ms] | goal |",
        "|---|---|---|---|---|---|",
    ]
    for survey in ("rubin", "ztf"):
        r = result[survey]
        ms = r["ms_per_alert"]
        lines.append(
            f"| {survey} ({r['mean_message_bytes'] // 1000} kB) | {r['alerts_per_cpu_second']:.0f} | "
            f"{ms['avro_decode']} | {ms['stamp_normalise']} | {ms['total']} | "
            f"{result['goal_alerts_per_core_second']} |"
        )
    return "\n".join(lines)


def _load(name: str) -> dict | None:
    path = ROOT / "benchmarks" / "results" / name
    return json.loads(path.read_text()) if path.exists() else None


def inference_table() -> str:
    result = _load("inference_cpu.json")
    if result is None:
        return "(not measured yet)"
    lines = [
        f"Batch {result['results'][0]['batch']}, float32, {result['threads']} threads, load average "
        f"{result.get('load_average_1min', 0):.1f} while measured.",
        "",
        "| net | parameters | full sequences/s | incremental alerts/s | incremental / full |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['net']} | {r['parameters']:,} | {r['full_sequences_per_s']} | "
            f"{r['incremental_alerts_per_s']} | {r['incremental_over_full']}x |"
        )
    return "\n".join(lines)


def state_table() -> str:
    result = _load("state.json")
    if result is None:
        return "(not measured yet)"
    lines = ["| per second | SQLite | PostgreSQL |", "|---|---:|---:|"]
    for key, label in (
        ("add_frames_per_second", "`add_frames`, one frame per call (one durable commit each)"),
        ("add_batch_of_100_frames_per_second", "`add_batch` of 100 objects (frames/s, one commit per batch)"),
        ("redelivered_add_frames_per_second", "redelivered frames (duplicates)"),
        ("frames_reads_per_second", "`frames()` reads of 10-frame objects"),
    ):
        lines.append(f"| {label} | {result['sqlite'][key]:,.0f} | {result['postgres'][key]:,.0f} |")
    return "\n".join(lines)


def service_table() -> str:
    result = _load("service_cpu.json")
    if result is None:
        return "(not measured yet)"
    lines = [
        "| net | parameters | throughput [alerts/s] | rate [alerts/s] | classifications | p50 latency [s] | "
        "p99 latency [s] |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["results"]:
        t, lat = r["throughput"], r["latency_at_rate"]
        lines.append(
            f"| {r['net']} | {r['parameters']:,} | {t['alerts_per_second']} | "
            f"{lat['rate_alerts_per_second']:.0f} | {lat['classifications']} | "
            f"{lat['p50_s']} | {lat['p99_s']} |"
        )
    return "\n".join(lines)


def render(text: str) -> str:
    tables = (
        ("settings-table", settings_markdown()),
        ("bench-decode", decode_table()),
        ("bench-inference", inference_table()),
        ("bench-state", state_table()),
        ("bench-service", service_table()),
    )
    for name, table in tables:
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    return text


def main() -> int:
    readme = ROOT / "README.md"
    current = readme.read_text()
    wanted = render(current)
    if "--check" in sys.argv:
        return 0 if wanted == current else 1
    readme.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
