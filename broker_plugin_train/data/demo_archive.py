"""Rebuild the bundled demo archive ``broker_plugin/demo_data/`` (alerts + truth table).

``python -m broker_plugin_train.data.demo_archive [OUT]``. The objects come from the default config with a
seed of their own (20240101), so none of them is in the default training set (seed 20230523): two objects per
class with at least 12 alerts each, their first 12 alerts kept (each with science, template and
difference cutouts and the object's photometric history), which holds the archive to about 5 MB.

The archive keeps the fixed look (domain randomisation off): the Stripe-82-like survey its README
describes, whose alerts the tests of the serving side check pixel by pixel and decode to the snapshot in
``tests/serde/data/decoded_alerts.json``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from broker_plugin_train.config import load_config
from broker_plugin_train.data.alerts import write_alerts

ROOT = Path(__file__).resolve().parents[2]
DEMO_SEED = 20240101
PER_CLASS, MIN_ALERTS, MAX_ALERTS = 2, 12, 12


def build(out: Path = ROOT / "broker_plugin" / "demo_data") -> dict:
    """Write the archive into ``out`` (its ``*.avro`` and ``truth.csv`` are replaced; README kept)."""
    config = load_config(ROOT / "broker_plugin_train" / "configs" / "default.toml").simulation
    config = config.model_copy(
        update={"seed": DEMO_SEED, "domain": config.domain.model_copy(update={"enabled": False})}
    )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.avro"):
        old.unlink()
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    summary = write_alerts(config, staging, per_class=PER_CLASS, min_alerts=MIN_ALERTS, max_alerts=MAX_ALERTS)
    for path in staging.iterdir():
        path.replace(out / path.name)
    staging.rmdir()
    return summary


if __name__ == "__main__":
    result = build(Path(sys.argv[1])) if len(sys.argv) > 1 else build()
    print(f"wrote {result['n_alerts']} alerts of {result['n_objects']} objects (schema {result['version']})")
