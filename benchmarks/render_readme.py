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


def ensemble_table() -> str:
    result = _load("inference_ensemble_cpu.json")
    return "(not measured yet)" if result is None else result["markdown"]


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
    args = result.get("arguments", {})
    lines = [
        f"{'Keyed' if result['results'][0].get('keyed', True) else 'Unkeyed'} Rubin alerts into "
        f"{args.get('partitions', 4)} partitions; "
        f"code `{result.get('code', '?')}`, "
        f"load average {result['machine'].get('load_average_1min_after', 0):.1f} after the run.",
        "",
        "| model | members | backbones | history trees | throughput [alerts/s] | p50 / p99 latency at "
        f"{args.get('rate', 300):.0f}/s [s] | decode / normalise / store / inference / publish [s] |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for r in result["results"]:
        t, lat = r["throughput"], r["latency_at_rate"]
        stages = r.get("stages_s")
        shares = (
            " / ".join(f"{stages[k]}" for k in ("decode", "normalise", "store", "inference", "publish"))
            if stages
            else "-"
        )
        backbones = "shared" if r.get("share_backbones", True) else "one per member"
        lines.append(
            f"| {r.get('model', r.get('net'))} | {r.get('ensemble_size', 1)} | {backbones} | "
            f"{'blended' if r.get('trees') else '-'} | "
            f"{t['alerts_per_second']} | "
            f"{lat['p50_s']} / {lat['p99_s']} | {shares} |"
        )
    return "\n".join(lines)


def service_cpu_table() -> str:
    """Where the cores went during each row's throughput run, per process, and what that bounds."""
    result = _load("service_cpu.json")
    rows = [r for r in (result or {}).get("results", []) if r["throughput"].get("cpu_s_by_process")]
    if not rows:
        return "(not measured yet)"
    cores = result["machine"]["cores"]
    lines = [
        f"CPU seconds of each process during the throughput run ({rows[0]['throughput']['alerts']:,} alerts, "
        f"{cores} cores). *Busy*: total CPU over {cores} x the run's seconds. *Bound without inference*: "
        f"{cores} cores divided by the CPU seconds per alert left after taking the whole inference stage "
        "(its wall time) away, at 100 % busy: what no model, however cheap, could beat on this chain.",
        "",
        "| model | alerts/s | service | preparation | broker | producer | total | busy | "
        "bound without inference [alerts/s] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, cpu = r["throughput"], r["throughput"]["cpu_s_by_process"]
        busy = cpu["total"] / (cores * t["seconds"])
        left = cpu["total"] - r["stages_s"]["inference"]
        bound = f"{cores * t['alerts'] / left:.0f}" if left > 0 else "-"
        lines.append(
            f"| {r['model']} | {t['alerts_per_second']} | {cpu['service']} | {cpu['preparation']} | "
            f"{cpu['broker']} | {cpu['producer']} | {cpu['total']} | {busy:.0%} | {bound} |"
        )
    return "\n".join(lines)


def side_by_side_table(name: str) -> str:
    """The summary of ``benchmarks/side_by_side.py``'s ``<name>_side_by_side.json``: medians and ratios."""
    result = _load(f"{name}_side_by_side.json")
    if result is None:
        return "(not measured yet)"
    metrics = [k[: -len("_ratio")] for k in result["summary"][0] if k.endswith("_ratio")]
    lines = [
        f"Code `{result['before']}` (before) and `{result['after']}` (after), alternating, "
        f"{result['repeats']} runs each: medians, and the median of the paired ratios after / before.",
        "",
        "| row | " + " | ".join(f"{m} before / after (ratio)" for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for row in result["summary"]:
        cells = [f"{row[f'{m}_before']} / {row[f'{m}_after']} ({row[f'{m}_ratio']}x)" for m in metrics]
        lines.append(f"| {row['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hostile_table() -> str:
    result = _load("hostile_memory.json")
    if result is None:
        return "(not measured yet)"
    lines = [
        f"Peak resident memory of a fresh process that decodes and normalises one message (limit "
        f"{result['limit_mb']} MB; a Python process with the decoder and normaliser imported holds "
        f"{result['baseline_mb']} MB before the message).",
        "",
        "| hostile message | bytes on the wire | outcome | peak RSS [MB] | seconds |",
        "|---|---:|---|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['case']} | {r['message_bytes']:,} | {r['outcome']} | {r['peak_rss_mb']} | {r['seconds']} |"
        )
    return "\n".join(lines)


def render(text: str) -> str:
    tables = (
        ("settings-table", settings_markdown()),
        ("bench-decode", decode_table()),
        ("bench-inference", inference_table()),
        ("bench-ensemble", ensemble_table()),
        ("bench-state", state_table()),
        ("bench-service", service_table()),
        ("bench-service-cpu", service_cpu_table()),
        ("bench-service-side-by-side", side_by_side_table("service")),
        ("bench-service-interleaved-side-by-side", side_by_side_table("service_interleaved")),
        ("bench-decode-side-by-side", side_by_side_table("decode")),
        ("bench-hostile", hostile_table()),
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
