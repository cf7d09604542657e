"""Hostile alerts built from real ones: one builder per class of bad input the plugin must survive.

Every builder returns the message bytes; :data:`HOSTILE` maps a case name to ``(builder, reasons)``, the
dead-letter reasons the case may get.
ZTF cases start from a real ZTF alert of ``tests/data/ztf``, Rubin cases from the factories' Rubin alert
with a real Rubin-format cutout.
"""

from __future__ import annotations

import copy
import io
import math
import zlib
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np

from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
from tests.factories import ZTF_GOLDEN, rubin_cutout_bytes, rubin_message
from tests.serde.hostile import container_header, raw_block

ZTF_FILE = ZTF_GOLDEN / "2713305823315015047.avro"


def container_bytes(schema: dict[str, Any], blocks: list[tuple[int, bytes]], codec: str = "null") -> bytes:
    """An Avro container file written by hand: each block is ``(declared record count, block bytes)``."""
    return container_header(schema, codec) + b"".join(raw_block(count, data) for count, data in blocks)


def ztf_alert(edit: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> bytes:
    """The real ZTF alert, with ``edit(schema, record)`` applied to copies of its schema and record."""
    with ZTF_FILE.open("rb") as fo:
        reader = fastavro.reader(fo)
        schema = copy.deepcopy(reader.writer_schema)
        record = next(reader)
    if edit is not None:
        edit(schema, record)
    out = io.BytesIO()
    fastavro.writer(out, fastavro.parse_schema(schema), [record])
    return out.getvalue()


def _candidate(**values: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def edit(_schema: dict[str, Any], record: dict[str, Any]) -> None:
        record["candidate"].update(values)

    return edit


def _candidate_type(
    field: str, avro_type: str, value: Any
) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """Change a candidate field's type in the writer schema (a hostile producer) and set ``value``."""

    def edit(schema: dict[str, Any], record: dict[str, Any]) -> None:
        candidate = next(f for f in schema["fields"] if f["name"] == "candidate")
        for f in candidate["type"]["fields"]:
            if f["name"] == field:
                f["type"] = avro_type
                f.pop("default", None)
        record["candidate"][field] = value

    return edit


def ztf_cutout_edit(raw: bytes) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def edit(_schema: dict[str, Any], record: dict[str, Any]) -> None:
        record["cutoutDifference"]["stampData"] = raw

    return edit


def fits_with_cards(cards: dict[str, str], data: bytes = b"") -> bytes:
    """A primary-HDU FITS file from raw card values (written verbatim: any value, even nonsense)."""
    lines = [f"{key:<8}= {value:>20}" for key, value in {"SIMPLE": "T", **cards}.items()] + ["END"]
    header = "".join(f"{line:<80}" for line in lines).encode()
    header += b" " * (-len(header) % 2880)
    return header + data + b"\0" * (-len(data) % 2880)


def rubin_cutout_with(**cards: str) -> bytes:
    """A real Rubin-format cutout whose header cards ``cards`` are replaced by raw values."""
    raw = bytearray(rubin_cutout_bytes(size=40))
    for key, value in cards.items():
        card = f"{key:<8}= {value:>20}".ljust(80).encode()
        for offset in range(0, raw.index(b"END     "), 80):
            if raw[offset : offset + 8] == f"{key:<8}".encode():
                raw[offset : offset + 80] = card
                break
        else:
            raise KeyError(key)
    return bytes(raw)


def tan_cutout(pc: tuple[float, float, float, float], cdelt: float = 0.2 / 3600) -> bytes:
    """A 40x40 standard celestial TAN cutout (float32 point source) with the given PC matrix and CDELT."""
    image = np.zeros((40, 40), ">f4")
    image[18:22, 18:22] = 500.0
    cards = {
        "BITPIX": "-32", "NAXIS": "2", "NAXIS1": "40", "NAXIS2": "40",
        "CTYPE1": "'RA---TAN'", "CTYPE2": "'DEC--TAN'", "CRPIX1": "20.5", "CRPIX2": "20.5",
        "CRVAL1": "150.0", "CRVAL2": "2.0", "CDELT1": repr(-cdelt), "CDELT2": repr(cdelt),
        "PC1_1": repr(pc[0]), "PC1_2": repr(pc[1]), "PC2_1": repr(pc[2]), "PC2_2": repr(pc[3]),
    }  # fmt: skip
    return fits_with_cards(cards, image.tobytes())


def rubin_bad(diaSourceId: int, **kwargs: Any) -> bytes:
    return rubin_message(diaSourceId=diaSourceId, diaObjectId=diaSourceId, **kwargs)


def gzip_bomb(inflated: int = 64_000_000) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (about a thousandth of that on the wire)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * 1_000_000
    return b"".join(packer.compress(chunk) for _ in range(inflated // len(chunk))) + packer.flush()


def deflate_bomb(inflated: int = 64_000_000) -> bytes:
    """A container whose one deflate block inflates to ``inflated`` bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * 1_000_000
    data = b"".join(packer.compress(chunk) for _ in range(inflated // len(chunk))) + packer.flush()
    schema = {"type": "record", "name": "x", "fields": [{"name": "a", "type": "long"}]}
    return container_bytes(schema, [(inflated, data)], codec="deflate")


EMPTY_RECORD = {"type": "record", "name": "empty", "fields": []}

#: Case name -> (builder of the message bytes given a diaSourceId, dead-letter reasons it may get).
HOSTILE: dict[str, tuple[Callable[[int], bytes], set[str]]] = {
    "rubin_blank_band": (lambda i: rubin_bad(i, band="   "), {"invalid_band"}),
    "rubin_nan_time": (lambda i: rubin_bad(i, midpointMjdTai=math.nan), {"invalid_time"}),
    "rubin_inf_time": (lambda i: rubin_bad(i, midpointMjdTai=math.inf), {"invalid_time"}),
    "rubin_ancient_time": (lambda i: rubin_bad(i, midpointMjdTai=-1e9), {"invalid_time"}),
    "rubin_1e38_pixels": (
        lambda i: rubin_bad(i, cutout=rubin_cutout_bytes(size=40, image=np.full((40, 40), 1e38))),
        {"bad_cutout_values"},
    ),
    "rubin_naxis_negative": (
        lambda i: rubin_bad(i, cutout=rubin_cutout_with(NAXIS="-40")),
        {"bad_cutout_header"},
    ),
    "rubin_naxis_nan": (lambda i: rubin_bad(i, cutout=rubin_cutout_with(NAXIS="NaN")), {"bad_cutout_header"}),
    "rubin_bitpix_nan": (
        lambda i: rubin_bad(i, cutout=rubin_cutout_with(BITPIX="NaN")),
        {"bad_cutout_header"},
    ),
    "rubin_string_crpix": (
        lambda i: rubin_bad(i, cutout=rubin_cutout_with(CRPIX1="'twenty'")),
        {"bad_cutout_header"},
    ),
    "rubin_huge_naxis": (
        lambda i: rubin_bad(
            i, cutout=fits_with_cards({"BITPIX": "-32", "NAXIS": "2", "NAXIS1": "16384", "NAXIS2": "16384"})
        ),
        {"cutout_too_large"},
    ),
    "tan_singular_pc": (lambda i: rubin_bad(i, cutout=tan_cutout((1.0, 1.0, 1.0, 1.0))), {"bad_cutout_wcs"}),
    "tan_cdelt_1e30": (
        lambda i: rubin_bad(i, cutout=tan_cutout((1.0, 0.0, 0.0, 1.0), 1e30)),
        {"bad_cutout_wcs"},
    ),
    "ztf_magpsf_minus_1000": (lambda i: ztf_alert(_candidate(magpsf=-1000.0)), {"invalid_photometry"}),
    "ztf_magzpsci_minus_60": (lambda i: ztf_alert(_candidate(magzpsci=-60.0)), {"invalid_photometry"}),
    "ztf_xpos_minus_inf": (lambda i: ztf_alert(_candidate(xpos=-math.inf)), {"invalid_position"}),
    "ztf_nan_jd": (lambda i: ztf_alert(_candidate(jd=math.nan)), {"invalid_time"}),
    "ztf_string_magpsf": (
        lambda i: ztf_alert(_candidate_type("magpsf", "string", "bright")),
        {"invalid_photometry"},
    ),
    "ztf_gzip_bomb": (lambda i: ztf_alert(ztf_cutout_edit(gzip_bomb())), {"cutout_too_large"}),
    "empty_schema_2e40_records": (
        lambda i: container_bytes(EMPTY_RECORD, [(2**40, b"")]),
        {"resource_limit"},
    ),
    "deflate_bomb": (lambda i: deflate_bomb(), {"resource_limit"}),
    "block_count_minus_1": (
        lambda i: container_bytes(EMPTY_RECORD, [(-1, b"")]),
        {"resource_limit"},
    ),
    "block_count_0": (
        lambda i: container_bytes(EMPTY_RECORD, [(0, b"")]),
        {"resource_limit"},
    ),
}


def ztf_plane_edit(plane: str, raw: bytes) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """Replace the real ZTF alert's ``cutout<Plane>`` stamp (``Science`` or ``Template``) by ``raw``."""

    def edit(_schema: dict[str, Any], record: dict[str, Any]) -> None:
        record[f"cutout{plane}"]["stampData"] = raw

    return edit


def rubin_with_planes(diaSourceId: int, science: bytes | None, template: bytes | None) -> bytes:
    """A Rubin 11.1 message with a real Rubin-format difference and the given science and template."""
    record = rubin_alert_record(
        "11.1", diaSourceId=diaSourceId, diaObjectId=diaSourceId, midpointMjdTai=60_500.25, band="r",
        ra=150.0, dec=2.0, psfFlux=1000.0, psfFluxErr=10.0, cutoutDifference=rubin_cutout_bytes(),
        cutoutScience=science, cutoutTemplate=template,
    )  # fmt: skip
    return encode_rubin_message(record, "11.1")


def _rubin_plane(plane: str, raw: bytes | None) -> Callable[[int], bytes]:
    good = rubin_cutout_bytes(size=40)
    return lambda i: rubin_with_planes(
        i, raw if plane == "science" else good, raw if plane == "template" else good
    )


#: Hostile science or template cutouts beside a good difference: case name -> (builder of the message bytes
#: given a diaSourceId, the plane, the reason it is missing for). The alert is used; the plane is dropped.
HOSTILE_PLANES: dict[str, tuple[Callable[[int], bytes], str, str]] = {
    "rubin_science_1e38_pixels": (
        _rubin_plane("science", rubin_cutout_bytes(size=40, image=np.full((40, 40), 1e38))),
        "science",
        "bad_cutout_values",
    ),
    "rubin_template_naxis_nan": (
        _rubin_plane("template", rubin_cutout_with(NAXIS="NaN")),
        "template",
        "bad_cutout_header",
    ),
    "rubin_science_huge_naxis": (
        _rubin_plane(
            "science", fits_with_cards({"BITPIX": "-32", "NAXIS": "2", "NAXIS1": "16384", "NAXIS2": "16384"})
        ),
        "science",
        "cutout_too_large",
    ),
    "rubin_template_singular_pc": (
        _rubin_plane("template", tan_cutout((1.0, 1.0, 1.0, 1.0))),
        "template",
        "bad_cutout_wcs",
    ),
    "rubin_science_not_fits": (_rubin_plane("science", b"\x00" * 100), "science", "corrupt_cutout"),
    "rubin_template_null": (_rubin_plane("template", None), "template", "missing_cutout"),
    "ztf_science_gzip_bomb": (
        lambda i: ztf_alert(ztf_plane_edit("Science", gzip_bomb())),
        "science",
        "cutout_too_large",
    ),
    "ztf_template_not_gzip": (
        lambda i: ztf_alert(ztf_plane_edit("Template", b"garbage")),
        "template",
        "corrupt_cutout",
    ),
}
