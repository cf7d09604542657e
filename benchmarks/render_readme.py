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


def render(text: str) -> str:
    for name, table in (("settings-table", settings_markdown()), ("bench-decode", decode_table())):
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
