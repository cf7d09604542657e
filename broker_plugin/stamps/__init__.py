"""Cutouts to model frames: FITS bytes in, a north-up, fixed-scale, masked 32x32 frame out.

``astropy`` is used only inside this subpackage. The resampler (:mod:`.resample`) is the one code path
that both serving and the training-data simulator use, so the model sees the same pixels in both.
"""

from broker_plugin.stamps.normalise import StampNormaliser
from broker_plugin.stamps.resample import ResamplePlan, resample_to_frame
from broker_plugin.stamps.rubin_cutout import RubinCutoutGeometry, write_rubin_cutout

__all__ = [
    "ResamplePlan",
    "RubinCutoutGeometry",
    "StampNormaliser",
    "resample_to_frame",
    "write_rubin_cutout",
]
