"""The service's normaliser obeys Settings.limits, and every real ZTF alert still becomes a valid frame."""

from __future__ import annotations

import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts
from broker_plugin.pipeline import Inbound
from broker_plugin.records import check_frame
from broker_plugin.serde.alerts import iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.stamps import StampNormaliser
from tests.factories import shared_ztf_dir
from tests.stamps.hostile import rubin_alert, rubin_cutout

SHARED = shared_ztf_dir()


def test_factory_passes_settings_limits_to_the_normaliser(service_settings: Settings) -> None:
    limits = service_settings.limits.model_copy(update={"max_cutout_bytes": 10_000})
    parts = build_parts(service_settings.model_copy(update={"limits": limits}))
    try:
        result = parts.pipeline.process([Inbound(rubin_alert(rubin_cutout()), ref="a")])
    finally:
        parts.close()
    assert len(rubin_cutout()) > 10_000
    assert [(ref, reason) for ref, reason, _ in result.rejected] == [("a", "cutout_too_large")]


@pytest.mark.skipif(SHARED is None, reason="shared ZTF sample not found")
def test_every_shared_real_ztf_alert_normalises_to_a_valid_frame(decoder, settings: Settings) -> None:
    assert SHARED is not None
    normaliser = StampNormaliser(settings.stamps, settings.limits)
    count = 0
    for _, raw in iter_alert_payloads(SHARED):
        for alert in iter_payload(raw, decoder):
            frame = check_frame(normaliser.normalise(alert), settings.stamps.size)
            assert frame.mask.mean() > 0.5 and np.abs(frame.data).max() > 0
            count += 1
    assert count == len(list(SHARED.glob("*.avro"))) == 145
