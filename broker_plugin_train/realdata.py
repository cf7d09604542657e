"""A labelled training set from archived alert files plus a labels CSV, through serving's own code.

Alerts are decoded by :func:`broker_plugin.factory.build_decoder` and their difference cutouts
normalised by :class:`broker_plugin.stamps.StampNormaliser`, exactly as the service does, then grouped
by object (Rubin ``diaObjectId`` or ZTF ``objectId``) in time order. The CSV maps objects to classes:
a column of object ids (``diaObjectId`` or ``objectId``) and a label column, either one of the model's
classes or a catalogue type translated by ``mapping`` (the default maps SIMBAD cross-match types, ZTF's
``cdsxmatch``). Rows without a usable label are skipped and counted, as are alerts whose cutout cannot
be used; nothing is invented.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.factory import build_decoder
from broker_plugin.inference.preprocess import frame_context
from broker_plugin.serde.alerts import iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.stamps import StampNormaliser
from broker_plugin_train.config import CLASSES
from broker_plugin_train.objects import ObjectSource, RawObject

#: SIMBAD object types (ZTF ``cdsxmatch``) to the model's classes; anything else is left unlabelled.
SIMBAD_TO_CLASS: dict[str, str] = {
    **dict.fromkeys(["AGN", "QSO", "BLLac", "Blazar", "Blazar_Candidate", "Seyfert", "Seyfert_1",
                     "Seyfert_2", "AGN_Candidate", "QSO_Candidate", "LINER"], "AGN"),
    **dict.fromkeys(["SN", "SN*", "SNII", "SNIb", "SNIc", "SNIbc", "SLSN", "Candidate_SN*"], "SNOther"),
    **dict.fromkeys(["SNIa", "SN Ia", "SNIa-91bg", "SNIax"], "SNIa"),
    **dict.fromkeys(["RRLyr", "Cepheid", "EB*", "Mira", "BYDra", "CataclyV*", "Nova", "LPV*", "delSct",
                     "RotV*", "Eruptive*", "Variable*", "V*", "RSCVn", "YSO"], "Variable"),
}  # fmt: skip


@dataclass
class RealDataReport:
    """What went in and what was left out."""

    alerts: int = 0
    frames: int = 0
    objects: int = 0
    unusable_alerts: Counter[str] = field(default_factory=Counter)
    unlabelled_objects: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)


def read_labels(
    path: str | Path,
    *,
    id_column: str | None = None,
    label_column: str | None = None,
    mapping: Mapping[str, str] | None = SIMBAD_TO_CLASS,
) -> dict[str, str]:
    """Object id -> class name from a CSV (ids as strings; conflicting labels drop the object).

    Parameters
    ----------
    path
        The CSV file.
    id_column
        Default: ``diaObjectId`` if present, else ``objectId``.
    label_column
        Default: ``label`` if present, else ``cdsxmatch``.
    mapping
        Translates catalogue labels that are not class names; None accepts class names only.
    """
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = rows[0].keys() if rows else []
    id_col = id_column or ("diaObjectId" if "diaObjectId" in columns else "objectId")
    label_col = label_column or ("label" if "label" in columns else "cdsxmatch")
    seen: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        raw = (row.get(label_col) or "").strip()
        cls = raw if raw in CLASSES else (mapping or {}).get(raw)
        seen[str(row[id_col]).strip()].add(cls or "")
    return {k: next(iter(v)) for k, v in seen.items() if len(v) == 1 and next(iter(v))}


def build_source(
    alerts: str | Path,
    labels: str | Path,
    *,
    settings: Settings | None = None,
    pool: str = "transfer",
    mapping: Mapping[str, str] | None = SIMBAD_TO_CLASS,
) -> tuple[ObjectSource, RealDataReport]:
    """Decode, normalise and group the alerts under ``alerts``; label them from ``labels``.

    Parameters
    ----------
    alerts
        Alert file, folder or ``.tar(.gz)`` (anything ``python -m broker_plugin inspect`` reads).
    labels
        The labels CSV (see :func:`read_labels`).
    settings
        Service settings (stamp size and scale); the defaults by default.
    pool
        Pool the objects join (``transfer``: confirmed labels).
    mapping
        Catalogue label translation.
    """
    settings = settings or Settings()
    decoder = build_decoder(settings)
    normaliser = StampNormaliser(settings.stamps)
    label_of = read_labels(labels, mapping=mapping)
    report = RealDataReport()
    frames: dict[str, list] = defaultdict(list)
    digest = hashlib.sha256(Path(labels).read_bytes())
    for name, raw in iter_alert_payloads(alerts):
        digest.update(name.encode() + hashlib.sha256(raw).digest())
        for item in iter_payload(raw, decoder):
            report.alerts += 1
            if isinstance(item, BrokerPluginError):
                report.unusable_alerts[item.reason] += 1
                continue
            try:
                frame = normaliser.normalise(item)
            except BrokerPluginError as exc:
                report.unusable_alerts[exc.reason] += 1
                continue
            frames[str(item.diaObjectId)].append(frame)
    objects, labels_out, ids = [], [], []
    for obj_id in sorted(frames):
        if obj_id not in label_of:
            report.unlabelled_objects += 1
            continue
        seq = sorted(frames[obj_id], key=lambda f: (f.midpointMjdTai, f.diaSourceId))
        objects.append(RawObject(np.stack([f.data for f in seq]), np.stack([f.mask for f in seq]),
                                 tuple(f.band for f in seq), frame_context(seq)))  # fmt: skip
        labels_out.append(CLASSES.index(label_of[obj_id]))
        ids.append(obj_id)
        report.frames += len(seq)
    report.objects = len(objects)
    report.class_counts = {c: labels_out.count(k) for k, c in enumerate(CLASSES)}
    source = ObjectSource(objects, np.array(labels_out, np.int64), np.full(len(objects), pool),
                          digest.hexdigest(), ids=ids)  # fmt: skip
    return source, report
