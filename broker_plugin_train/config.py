"""Typed configuration of ``python -m broker_plugin_train``, read from TOML files (``configs/*.toml``).

These are the *model-building* settings (what to simulate, how to train), not the service's
:class:`broker_plugin.config.Settings`. Every stage reads the sections it needs; unknown keys are errors
so that a typo in a config file fails loudly instead of silently using a default.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker_plugin.cli import UserError
from broker_plugin_train.recipe_config import TrainingSection

#: The four classes of the paper, in the order of the model's outputs.
CLASSES: tuple[str, ...] = ("AGN", "SNIa", "Variable", "SNOther")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used: one line per problem (exit status 2 in ``__main__``).

    A ``ValueError`` too, as a bad value is.
    """


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassCounts(_Strict):
    """How many objects of each labelled class, and how the SN labels split (convention-spec 2.1)."""

    agn: int = Field(906, ge=0, description="AGN (split in halves between the two pools).")
    snia_unconfirmed: int = Field(1448, ge=0, description="Photometrically classified SN Ia.")
    snia_confirmed: int = Field(540, ge=0, description="Spectroscopically confirmed SN Ia.")
    variable: int = Field(3225, ge=0, description="Variable stars (split in halves between the pools).")
    snother_unconfirmed: int = Field(2041, ge=0, description="Photometric SN II/Ibc.")
    snother_confirmed: int = Field(89, ge=0, description="Spectroscopic SN II/Ibc/SLSN.")

    @property
    def total(self) -> int:
        """Number of objects."""
        return (
            self.agn
            + self.snia_unconfirmed
            + self.snia_confirmed
            + self.variable
            + self.snother_unconfirmed
            + self.snother_confirmed
        )


class PopulationConfig(_Strict):
    """Astrophysical populations."""

    counts: ClassCounts = Field(default_factory=ClassCounts)
    label_noise: float = Field(
        0.03, ge=0, le=0.5, description="Fraction of unconfirmed SNe whose true type is the other SN type."
    )
    zmax_confirmed: float = Field(0.3, gt=0, description="Highest redshift of spectroscopic SNe.")
    zmax_unconfirmed: float = Field(0.5, gt=0, description="Highest redshift of photometric SNe.")
    host_fraction: float = Field(0.92, ge=0, le=1, description="Fraction of SNe with a detectable host.")
    mw_ebv_max: float = Field(0.12, ge=0, description="Milky Way E(B-V) is drawn in [0.02, this].")


#: Each cadence's own filter family (``simulation.survey.filters = "auto"``).
CADENCE_FILTERS = {"stripe82": "sdss2010", "rubin": "lsst2023"}


class SurveyConfig(_Strict):
    """Cadence, seeing and depth."""

    cadence: Literal["stripe82", "rubin"] = Field("stripe82", description="Survey strategy.")
    first_season_mjd: float = Field(53616.0, description="Start of the first season [MJD] (2005-09-01).")
    n_seasons: int = Field(3, ge=1, description="Seasons objects are spread over.")
    season_days: float = Field(90.0, gt=0, description="Length of one observing season [days].")
    night_gap_days: tuple[int, int] = Field((2, 5), description="Range of gaps between survey nights.")
    weather_loss: float = Field(0.2, ge=0, lt=1, description="Fraction of survey nights lost.")
    object_loss: float = Field(0.05, ge=0, lt=1, description="Fraction of nights an object is not covered.")
    missing_frame: float = Field(0.03, ge=0, lt=1, description="Fraction of frames blank (masked).")
    seeing_median_arcsec: float = Field(1.35, gt=0, description="Median r-band seeing FWHM [arcsec].")
    seeing_range_arcsec: tuple[float, float] = Field((0.9, 2.0), description="Seeing is clipped to this.")
    m5_median: dict[str, float] = Field(
        default={"u": 21.8, "g": 22.6, "r": 22.4, "i": 21.9, "z": 20.6},
        description="5-sigma point-source depth at median seeing [AB mag], per band.",
    )
    sky_mag_arcsec2: dict[str, float] = Field(
        default={"u": 22.1, "g": 21.8, "r": 20.9, "i": 20.3, "z": 19.0, "y": 18.6},
        description="Dark-sky surface brightness [AB mag/arcsec^2] (sets the Poisson gain).",
    )
    bands: tuple[str, ...] = Field(("u", "g", "r", "i", "z"), description="Bands observed.")
    rubin_visit_fraction: float = Field(0.35, gt=0, le=1, description="Rubin: nights an object is visited.")
    rubin_pair_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Rubin: fraction of visits followed 15-45 min later by a second visit in a neighbouring "
        "band (the baseline strategy's pairs, for asteroid linking); 0 = one visit a night.",
    )
    filters: Literal["auto", "sdss2010", "lsst2023"] = Field(
        "auto",
        description="Filter throughputs the supernovae are observed through: SDSS 2010 or LSST 2023; 'auto' "
        "takes the cadence's own (stripe82: SDSS, rubin: LSST). Only SN spectra are integrated over them.",
    )

    @property
    def filter_family(self) -> str:
        """The filter family in use: :attr:`filters`, or the cadence's own when ``"auto"``."""
        return CADENCE_FILTERS[self.cadence] if self.filters == "auto" else self.filters

    @model_validator(mode="after")
    def _depths_cover_bands(self) -> SurveyConfig:
        missing = [b for b in self.bands if b not in self.m5_median or b not in self.sky_mag_arcsec2]
        if missing:
            raise ValueError(f"no depth or sky brightness for bands {missing}")
        return self


def _ordered(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name}: lower bound {pair[0]} above upper bound {pair[1]}")


class DomainConfig(_Strict):
    """Domain randomisation: what differs between surveys and simulators, drawn per object or per visit.

    The model is scored on streams of other surveys and simulators, so the training set should not have
    one survey's look. With ``enabled`` every object gets its own observing conditions (seeing, depth),
    cadence (gaps, a season gap, a subset of bands) and presentation (native pixel scale, a rotation and
    a cutout size per visit), and the host population is wider; the physics (light curves, redshifts,
    class counts) is untouched. A range ``[a, a]`` fixes a value. See
    ``broker_plugin_train/README_simulator.md``.
    """

    enabled: bool = Field(
        False, description="Draw each object's look from the ranges below (False: the survey's fixed look)."
    )
    seeing_median_arcsec: tuple[float, float] = Field(
        (0.7, 2.0),
        description="Range of an object's median r-band seeing FWHM [arcsec], drawn log-uniformly "
        "(Rubin ~0.7, SDSS ~1.4, ZTF ~2).",
    )
    seeing_night_sigma: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Log scatter of the seeing from night to night around the object's median.",
    )
    seeing_range_arcsec: tuple[float, float] = Field(
        (0.6, 2.5), description="Every visit's r-band seeing is clipped to this [arcsec]."
    )
    depth_offset_mag: tuple[float, float] = Field(
        (-1.0, 1.0),
        description="Range of an object's 5-sigma depth offset from the survey's m5 [mag], all bands, "
        "uniform.",
    )
    depth_band_offset_mag: float = Field(
        0.3, ge=0, description="Extra per-object, per-band depth offset, uniform in +-this [mag]."
    )
    depth_visit_sigma_mag: float = Field(
        0.15, ge=0, description="Per-visit depth scatter [mag], normal clipped at 2 sigma."
    )
    nights: Literal["own", "survey"] = Field(
        "own",
        description="'own': every object has nights of its own, with a mean gap drawn from "
        "night_gap_mean_days; 'survey': the survey's shared nights and cadence settings.",
    )
    night_gap_mean_days: tuple[float, float] = Field(
        (1.5, 8.0),
        description="Range of an object's mean gap between observed nights [days], log-uniform; gaps are "
        "1 + Poisson(mean - 1) (daily to ZTF/Stripe-82-like to sparse).",
    )
    season_gap_probability: float = Field(
        0.3, ge=0, le=1, description="Fraction of objects whose season has a block of nights without visits."
    )
    season_gap_days: tuple[float, float] = Field(
        (10.0, 45.0), description="Length of that block [days], uniform (moon, weather runs, downtime)."
    )
    band_subset_probability: float = Field(
        0.3, ge=0, le=1, description="Fraction of objects observed in a subset of the survey's bands."
    )
    gr_only_probability: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Of those, the fraction seen in g and r only (ZTF-like); the others lose 1..n-min_bands "
        "random bands.",
    )
    min_bands: int = Field(2, ge=1, description="Fewest bands an object keeps.")
    one_band_night_probability: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of objects visited in one band a night (Rubin-like: the band drawn from "
        "Rubin's mix, a second neighbouring band 15-45 min later on one_band_pair_fraction of the nights) "
        "instead of every band of the object each night (SDSS/Stripe-82-like).",
    )
    one_band_pair_fraction: float = Field(
        0.7, ge=0, le=1, description="Of those objects' nights, the fraction with a second visit."
    )
    native_pixel_scale_arcsec: tuple[float, float] = Field(
        (0.2, 1.0),
        description="Range of an object's native pixel scale [arcsec], log-uniform (Rubin 0.2, SDSS 0.396, "
        "ZTF 1.01).",
    )
    rotation_deg: tuple[float, float] = Field(
        (0.0, 360.0), description="Range of the native image's orientation per visit [deg], uniform."
    )
    cutout_size: tuple[int, int] = Field(
        (30, 64),
        description="Range of the native cutout's side per visit [native pixels], uniform; a cutout smaller "
        "than the frame's footprint leaves the rest of the frame masked, as serving does.",
    )
    hostless_fraction: float = Field(
        0.2, ge=0, le=1, description="Fraction of SNe without a detectable host (replaces 1 - host_fraction)."
    )
    host_mag_sigma: float = Field(
        1.5, ge=0, description="Scatter of SN hosts' absolute magnitude [mag] (fixed look: 1.0)."
    )
    host_size_sigma: float = Field(
        0.6, ge=0, description="Log scatter of SN hosts' half-light radius (fixed look: 0.4)."
    )
    host_offset_scale: tuple[float, float] = Field(
        (0.5, 2.0),
        description="Range of the factor on an SN's offset from its host centre, log-uniform "
        "(fixed look: 1).",
    )
    host_colour_sigma_mag: float = Field(
        0.2, ge=0, description="Per-object, per-band scatter of the host colour [mag] (red and blue hosts)."
    )
    agn_host_contrast_mag: tuple[float, float] = Field(
        (-1.0, 3.5),
        description="Host minus nucleus r magnitude of AGN hosts [mag], uniform (fixed look: 0..2.5).",
    )
    agn_host_size_arcsec: tuple[float, float] = Field(
        (0.5, 3.0), description="Half-light radius of AGN hosts [arcsec], uniform (fixed look: 0.8..2)."
    )

    @model_validator(mode="after")
    def _ranges(self) -> DomainConfig:
        for name in (
            "seeing_median_arcsec",
            "seeing_range_arcsec",
            "depth_offset_mag",
            "season_gap_days",
            "native_pixel_scale_arcsec",
            "rotation_deg",
            "cutout_size",
            "host_offset_scale",
            "agn_host_contrast_mag",
            "agn_host_size_arcsec",
        ):
            _ordered(name, getattr(self, name))
        positive = (
            "seeing_median_arcsec",
            "seeing_range_arcsec",
            "native_pixel_scale_arcsec",
            "host_offset_scale",
            "agn_host_size_arcsec",
        )
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} must be positive")
        _ordered("night_gap_mean_days", self.night_gap_mean_days)
        if self.night_gap_mean_days[0] < 1:
            raise ValueError("night_gap_mean_days must be >= 1 (one night at most per day)")
        if self.season_gap_days[0] < 0:
            raise ValueError("season_gap_days must be >= 0")
        if self.rotation_deg[1] - self.rotation_deg[0] > 360:
            raise ValueError("rotation_deg spans more than a turn")
        if self.cutout_size[0] < 4:
            raise ValueError("cutout_size must be at least 4 pixels")
        return self


class RenderConfig(_Strict):
    """Pixels: native images, artefacts, and the model frame."""

    frame_size: int = Field(32, ge=8, description="Side of the model frame [pixels].")
    frame_pixel_scale_arcsec: float = Field(0.4, gt=0, description="Frame pixel scale [arcsec].")
    native_pixel_scale_arcsec: float = Field(
        0.4,
        gt=0,
        description="Pixel scale of the simulated survey images (SDSS: 0.396; 0.4 = one frame pixel).",
    )
    native_rotation_sigma_deg: float = Field(
        0.5, ge=0, description="Scatter of the native image orientation (SDSS drift scans: near 0)."
    )
    psf_wing_weight: float = Field(0.1, ge=0, lt=1, description="Flux in the PSF's 2x wider wing.")
    mismatch_sigma: float = Field(0.03, ge=0, description="Relative PSF-width error of the subtraction.")
    misregistration_arcsec: float = Field(0.03, ge=0, description="Template misregistration [arcsec].")
    astrometric_jitter_arcsec: float = Field(0.04, ge=0, description="Source centring error [arcsec].")
    bad_column_rate: float = Field(0.03, ge=0, le=1, description="Fraction of images with a bad column.")
    mask_blob_rate: float = Field(0.03, ge=0, le=1, description="Fraction of images with a masked blob.")
    template_visits: int = Field(
        20, ge=1, description="Visits co-added into the template (its noise variance is 1/N of a visit's)."
    )
    template_seeing_ratio: float = Field(
        0.85,
        gt=0,
        description="Template FWHM / the median FWHM of the object's visits in a band (good-seeing co-add).",
    )
    science_template: bool = Field(
        True, description="Also store science and template frames in the shards (alerts always carry them)."
    )


class AlertConfig(_Strict):
    """Rubin alerts written from the simulated objects."""

    schema_version: str | None = Field(None, description="Rubin schema; None = the latest bundled one.")
    min_snr: float = Field(5.0, ge=0, description="Only epochs with |psfFlux/psfFluxErr| >= this alert.")
    pixel_scale_arcsec: float = Field(0.2, gt=0, description="Rubin cutout pixel scale [arcsec].")
    size_range: tuple[int, int] = Field((30, 102), description="Rubin cutout sides [pixels].")
    size_scale: float = Field(12.0, gt=0, description="Mean excess of the side over the minimum [pixels].")
    first_object_id: int = Field(3_068_394_000_000_000_000, ge=0, description="diaObjectId of object 0.")


class SimulationConfig(_Strict):
    """Everything ``python -m broker_plugin_train simulate`` needs."""

    seed: int = Field(20230523, description="Master seed; every object's randomness derives from it.")
    shard_objects: int = Field(512, ge=1, description="Objects per shard.")
    workers: int = Field(2, ge=1, description="Worker processes.")
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    survey: SurveyConfig = Field(default_factory=SurveyConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    domain: DomainConfig = Field(default_factory=DomainConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)

    @model_validator(mode="after")
    def _domain_fits_survey(self) -> SimulationConfig:
        if self.domain.enabled and self.domain.min_bands > len(self.survey.bands):
            raise ValueError(
                f"domain.min_bands = {self.domain.min_bands} exceeds the survey's "
                f"{len(self.survey.bands)} bands"
            )
        return self


class TrainConfig(_Strict):
    """A whole ``train`` config file; later stages add their sections here."""

    name: str = Field("default", description="Name of this configuration (recorded in outputs).")
    data_dir: str = Field("data/sim", description="Where ``simulate`` writes the dataset.")
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    training: TrainingSection = Field(default_factory=TrainingSection)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word is a string


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--dotted.key=value`` overrides (values in TOML syntax; bare words are strings).

    Raises
    ------
    ConfigError
        For an argument that is not ``--key=value``, or a key below a value that is not a table.
    """
    for item in overrides:
        key, sep, value = item.removeprefix("--").partition("=")
        if not item.startswith("--") or not sep or not key:
            raise ConfigError(f"expected --dotted.key=value (e.g. --training.seed=7), got {item!r}")
        *parents, leaf = override_key(item).split(".")
        node = data
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"{item}: {where} is a value, not a section with keys")
        node[leaf] = _parse_value(value)
    return data


def override_key(item: str) -> str:
    """The dotted key an override ``--dotted.key=value`` sets (dashes read as underscores)."""
    return item.removeprefix("--").partition("=")[0].replace("-", "_")


def bundled_configs() -> dict[str, Path]:
    """The configs shipped with the package, by name (``default``, ``paper``, ...)."""
    folder = importlib.resources.files("broker_plugin_train").joinpath("configs")
    return {
        entry.name.removesuffix(".toml"): Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


def config_path(path: str | Path) -> Path:
    """The config file ``path`` names: the file itself, or else the bundled config of that name.

    Raises
    ------
    ConfigError
        Neither a file nor a bundled config (the message lists the bundled ones).
    """
    if Path(path).is_file():
        return Path(path)
    bundled = bundled_configs()
    name = Path(path).name.removesuffix(".toml")
    if name in bundled and (Path(path).parent == Path() or Path(path).parent.name == "configs"):
        return bundled[name]
    names = ", ".join(sorted(bundled))
    raise ConfigError(f"config file {path} not found (give a path, or a bundled config: {names})")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read and validate a TOML config file.

    Parameters
    ----------
    path
        The file, or the name of a bundled config (:func:`config_path`).
    overrides
        ``--dotted.key=value`` items applied on top of the file (see :func:`apply_overrides`).

    Returns
    -------
    TrainConfig
        The validated configuration (defaults fill what the file leaves out).

    Raises
    ------
    ConfigError
        The file is missing or not TOML, an override is malformed, or a value is invalid: one line per
        problem, naming the dotted key.
    """
    file = config_path(path)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {file}: {exc}") from exc
    try:
        return TrainConfig.model_validate(apply_overrides(data, overrides))
    except ValidationError as exc:
        raise ConfigError(*config_error_lines(exc, file, overrides)) from exc


def config_error_lines(exc: ValidationError, file: Path, overrides: Sequence[str] = ()) -> list[str]:
    """One line per invalid value: its dotted key, the value and what is wrong, and where it was set.

    A value an override set is named as that override (``--training.pretrain.epochs='abc': ...``), one
    from the file as ``training.pretrain.epochs='abc' in FILE: ...``.
    """
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        # The last override that set this key, a section above it or a key below it (it wins).
        item = next(
            (
                item
                for item in reversed(overrides)
                if (k := override_key(item)) == key or key.startswith(f"{k}.") or k.startswith(f"{key}.")
            ),
            None,
        )
        if error["type"] == "extra_forbidden":
            message = "unknown key (a typo? see the bundled configs for every key)"
        else:
            message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        shown = "" if isinstance(value, dict) or error["type"] == "missing" else f"={value!r}"
        if item is None:
            where = f"{key or 'the config'}{shown} in {file}"
        elif override_key(item) == key:
            where = f"--{key}{shown}"
        else:
            where = f"{key}{shown} (set by {item})"
        lines.append(f"{where}: {message}")
    return lines
