"""ConvEntion alert-broker plugin.

Classifies astronomical transients from the time series of their difference-image cutouts as Rubin and
ZTF alerts arrive. See ``DESIGN.md``-level overview in the README; the layers are ``serde`` (bytes to
records), ``stamps`` (FITS cutouts to normalised frames), and, above them, state, inference and service.
"""

__version__ = "0.1.0"
