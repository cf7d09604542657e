"""ZTF's units and conventions.

The alert's own candidate (:mod:`.ztf`) and its history (:mod:`.history_points`) share them, so that
both convert alike.
"""

#: ZTF filter id -> band.
ZTF_BANDS = {1: "g", 2: "r", 3: "i"}
#: Julian date - MJD [d].
JD_TO_MJD = 2400000.5
#: TAI - UTC [d] (37 s since 2017).
TAI_MINUS_UTC_DAYS = 37.0 / 86400.0
#: Exposure time of a candidate that has none (null or 0) [s].
DEFAULT_EXPTIME_S = 30.0
#: AB magnitude of 1 nJy.
NJY_ZEROPOINT = 31.4
#: Plausible PSF magnitudes, their errors and science-image zero points [mag]: far wider than any real
#: alert (magpsf 13-23, sigmapsf < 1, magzpsci 24-29), narrow enough that every derived flux is finite.
MAG_RANGE = (-5.0, 40.0)
MAG_ERROR_RANGE = (0.0, 10.0)
ZEROPOINT_RANGE = (15.0, 40.0)
