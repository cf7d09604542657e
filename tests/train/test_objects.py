"""Training objects as the service sees them: the alert view, and planes/times/photometry per frame."""

import numpy as np

from broker_plugin.inference.history import HISTORY_FEATURES, HISTORY_POINTS
from broker_plugin.inference.preprocess import CONTEXT_FEATURES, FluxNormalisation
from broker_plugin_train.data.shards import ShardDataset
from broker_plugin_train.objects import PRECOVERY_DAYS, ObjectSource, detections


def test_detections_keep_significant_finite_epochs_only():
    flux = np.array([50.0, -60.0, 10.0, np.nan, 100.0])
    err = np.array([10.0, 10.0, 10.0, 10.0, 0.0])
    assert detections(flux, err, 5.0).tolist() == [True, True, False, False, False]


def test_alert_view_keeps_detections_and_objects_with_enough_alerts(small_dataset):
    data = ShardDataset(small_dataset)
    every = ObjectSource.from_shards(small_dataset)
    view = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    assert len(every) == len(data) and 0 < len(view) <= len(every)
    assert view.data_hash != every.data_hash  # an artifact records which view it was trained on
    for i in range(len(view)):
        raw = view.raw(i)
        assert len(raw.bands) >= 3
        c = raw.context
        assert np.all(np.abs(c.psf_flux / c.psf_flux_err) >= 5.0)
        assert np.all(np.diff(c.mjd) >= 0)
    # The same object keeps exactly its significant epochs, in order.
    row = every.ids.index(view.ids[0])
    seq = data[row]
    significant = np.abs(seq.psf_flux / seq.psf_flux_err) >= 5.0
    np.testing.assert_array_equal(view.raw(0).context.mjd, np.asarray(seq.mjd)[significant])
    assert view.labels[0] == every.labels[row] and view.pools[0] == every.pools[row]


def test_inputs_carry_planes_times_and_photometry(small_dataset):
    source = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    inp = source.model_input(0, FluxNormalisation(), 1, with_context=True)
    raw = source.raw(0)
    assert inp.aux.shape == (len(inp), 2, 32, 32) and inp.context().shape == (len(inp), CONTEXT_FEATURES)
    assert inp.first_mjd == raw.context.mjd[0]
    assert inp.presence[:, 1].all()  # the co-add exists at every alert
    assert np.isfinite(inp.aux).all() and np.abs(inp.aux).max() > 1.0  # static sky is seen, normalised
    plain = source.model_input(0, FluxNormalisation(), 1)
    assert plain.aux is None and np.array_equal(plain.x, inp.x)


def test_history_holds_every_epoch_from_the_precovery_on_and_outputs_read_only_the_past(small_dataset):
    data = ShardDataset(small_dataset)
    every = ObjectSource.from_shards(small_dataset)
    view = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    raw = view.raw(0)
    seq = data[every.ids.index(view.ids[0])]
    first = raw.context.mjd[0]
    mjd, flux = np.asarray(seq.mjd), np.asarray(seq.psf_flux)
    expected = (mjd >= first - PRECOVERY_DAYS) & np.isfinite(flux)
    np.testing.assert_array_equal(np.sort(raw.history.midpointMjdTai), mjd[expected])
    assert len(raw.history) > len(raw.bands)  # the undetected epochs too, which raise no alert
    assert raw.history.detected.sum() == len(raw.bands)  # exactly the alerts are detections
    inp = view.model_input(0, FluxNormalisation(), 1, with_context=True, with_history=True)
    assert inp.history.shape == (len(inp), HISTORY_POINTS, HISTORY_FEATURES)
    for k, t in enumerate(raw.context.mjd):  # the output at frame k reads the epochs up to its time
        assert inp.history[k, :, 0].sum() == min(HISTORY_POINTS, np.sum(raw.history.midpointMjdTai <= t))
    # A training draw randomises the history; evaluation never does.
    drawn = view.model_input(0, FluxNormalisation(), 1, with_history=True, rng=np.random.default_rng(3))
    again = view.model_input(0, FluxNormalisation(), 1, with_history=True)
    assert (
        np.array_equal(again.history, inp.history)
        and drawn.history[-1, :, 0].sum() <= inp.history[-1, :, 0].sum()
    )


def test_a_cutout_view_measures_only_the_centred_square_of_every_plane(small_dataset):
    whole = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    small = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3, cutout_side=15)
    assert small.ids == whole.ids and small.data_hash == whole.data_hash  # the same objects, another look
    raw, cut = whole.raw(0), small.raw(0)
    box = np.zeros((32, 32), bool)
    box[8:23, 8:23] = True
    for before, after in ((raw.masks, cut.masks), (raw.context.science_masks, cut.context.science_masks),
                          (raw.context.template_masks, cut.context.template_masks)):  # fmt: skip
        np.testing.assert_array_equal(after, before & box)
        assert before[:, ~box].any() and not after[:, ~box].any()
    np.testing.assert_array_equal(cut.flux, raw.flux)  # the pixels are the same; fewer are measured
    np.testing.assert_array_equal(cut.history.psfFlux, raw.history.psfFlux)  # photometry is the alert's
    norm = FluxNormalisation()
    inp, inp_cut = (
        whole.model_input(0, norm, 1, with_context=True),
        small.model_input(0, norm, 1, with_context=True),
    )
    assert not inp_cut.x[:, ~box].any() and not inp_cut.aux[:, :, ~box].any()
    assert not np.array_equal(inp_cut.aux[:, :, box], inp.aux[:, :, box])  # normalised over what is left
    assert ObjectSource.from_shards(small_dataset, cutout_side=40).raw(0).masks.sum() == (
        ObjectSource.from_shards(small_dataset).raw(0).masks.sum()
    )  # a cutout wider than the frame cuts nothing
