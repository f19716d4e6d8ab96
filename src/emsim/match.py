"""Imaging conditions read off micrographs, and the simulated domain that matches them (`emsim match`).

Per image (a 2-D array of detector counts or intensities):

- **Spectrum** (:func:`radial_spectrum`): the periodogram averaged over half-overlapping
  Hann-windowed ``WINDOW_PX`` tiles, averaged over rings of width one frequency bin.
- **Pixel size** (:func:`pixel_size_from_spacing`): where the file records none, from a lattice
  spacing the user names (e.g. 3.35 A for graphitic carbon's (002) fringes): the strongest peak of
  the detrended log spectrum gives the pixels per period.
- **Defocus** (:func:`fit_defocus`): the Thon rings of a thin amorphous support. The log spectrum
  and the model ``sin^2 chi(k)`` (phase contrast; ``chi`` of :mod:`emsim.simulation.optics`, with
  the given Cs and energy) are both projected off a cubic polynomial in k over the fitted band
  (which removes the smooth background and keeps the rings), and the defocus whose model
  correlates best with the spectrum wins; the fit's resolution is the highest frequency up to
  which the rings correlate. With Cs = 0 the rings of +df and -df are identical: the
  magnitude is reported and the sign left to the user; with Cs > 0 the sign is reported only
  where one sign fits clearly better. A fit that places fewer than ``MIN_ZEROS`` ring zeros inside
  the band is "near focus": ``|df|`` below the smallest defocus that puts that many there. The
  rings measure the defocus to the specimen's middle, not to its exit surface.
- **Dose** (:func:`dose_from_counts`, :func:`dose_from_noise`): from the mean counts and the
  camera's counts per electron; failing that, an estimate from the noise floor (the spectrum's
  high-frequency plateau as the per-pixel variance: exact for Poisson counts with white noise,
  biased by a detector's MTF or correlated noise), labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from emsim import data
from emsim.io import atomic_path
from emsim.learning import ood
from emsim.readers import read_images
from emsim.rescale import resample
from emsim.simulation import optics
from emsim.study.settings import Study

WINDOW_PX = 512  # periodogram tile (smaller images use their largest power of two)
BAND = (0.04, 0.45)  # fitted frequencies [cycles/px]: above the tile's lowest rings, below Nyquist and JPEG blocks
MIN_CORRELATION = 0.3  # a defocus fit below this is no fit (no rings)
MIN_ZEROS = 2  # ring zeros a fit must place inside the band (one broad lobe is no measurement)
SIGN_MARGIN = 0.05  # correlation by which one sign must beat the other to be reported
PEAK_SIGMAS = 4.0  # a lattice peak must stand this many robust sigmas above the detrended spectrum
NOISE_BAND = (0.42, 0.49)  # the spectrum's plateau taken as the noise floor [cycles/px]


@dataclass(frozen=True)
class Defocus:
    """A Thon-ring fit: ``magnitude_nm`` (None near focus), ``sign`` (+1 underfocus, -1 overfocus,
    0 unknown), ``correlation`` of model and spectrum, ``resolution_A`` the fit reached, and
    ``below_nm``: the smallest magnitude the band can measure."""

    magnitude_nm: float | None
    sign: int
    correlation: float
    resolution_A: float | None
    below_nm: float

    def describe(self) -> str:
        if self.magnitude_nm is None:
            return (
                f"no Thon rings inside the fitted band: near focus (|df| below {self.below_nm:.1f} nm) "
                "or no thin amorphous region in view"
            )
        sign = {1: "underfocus", -1: "overfocus", 0: "sign unknown"}[self.sign]
        return (
            f"|df| = {self.magnitude_nm:.1f} nm ({sign}; correlation {self.correlation:.2f}, "
            f"rings to {self.resolution_A:.2f} A)"
        )


def radial_spectrum(image: np.ndarray, window_px: int = WINDOW_PX) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies [cycles/px] and the ring-averaged periodogram of ``image`` (Hann tiles, half overlap)."""
    image = np.asarray(image, np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {image.shape}")
    window_px = min(window_px, 2 ** int(np.log2(min(image.shape))))
    if window_px < 64:
        raise ValueError(f"image of {image.shape[0]}x{image.shape[1]} px is too small for a spectrum (64 px at least)")
    hann = np.outer(np.hanning(window_px), np.hanning(window_px))
    step = window_px // 2
    power = np.zeros((window_px, window_px))
    tiles = 0
    for y in range(0, image.shape[0] - window_px + 1, step):
        for x in range(0, image.shape[1] - window_px + 1, step):
            tile = image[y : y + window_px, x : x + window_px]
            power += np.abs(np.fft.fft2((tile - tile.mean()) * hann)) ** 2
            tiles += 1
    power /= tiles * np.square(hann).sum()  # white noise of variance s^2 -> s^2
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(window_px), np.fft.fftfreq(window_px), indexing="ij"))
    bins = np.round(k * window_px).astype(int)
    counts = np.bincount(bins.ravel())
    radial = np.bincount(bins.ravel(), power.ravel()) / np.maximum(counts, 1)
    n = window_px // 2
    return np.arange(n) / window_px, radial[:n]


def _detrend(values: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``values`` (..., n) minus their least-squares cubic in ``k``."""
    basis = np.vander((k - k.mean()) / np.ptp(k), 4)
    coefficients, *_ = np.linalg.lstsq(basis, np.moveaxis(values, -1, 0), rcond=None)
    return values - np.moveaxis(basis @ coefficients, 0, -1)


def _in_band(k: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    return (k >= band[0]) & (k <= band[1])


def pixel_size_from_spacing(image: np.ndarray, spacing_A: float, band: tuple[float, float] = BAND) -> float:
    """Pixel size [A] from a lattice spacing that shows in ``image``: the detrended log spectrum's peak."""
    if not spacing_A > 0:
        raise ValueError(f"spacing_A must be > 0, got {spacing_A}")
    k, power = radial_spectrum(image)
    inside = _in_band(k, band)
    residual = _detrend(np.log(power[inside] + 1e-30), k[inside])
    peak = int(np.argmax(residual))
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))  # robust standard deviation
    if peak in (0, len(residual) - 1) or residual[peak] < PEAK_SIGMAS * spread:
        raise ValueError(
            f"no peak for a {spacing_A:g} A spacing in the spectrum (strongest at {k[inside][peak]:.3f} cycles/px, "
            f"{residual[peak] / spread:.1f} sigma); give --pixel-size"
        )
    return float(spacing_A * k[inside][peak])


def ring_profile(image: np.ndarray, pixel_size_A: float, band: tuple[float, float] = BAND) -> tuple:
    """Frequencies [1/A] of the fitted band and the detrended log spectrum over them (the rings)."""
    k, power = radial_spectrum(image)
    inside = _in_band(k, band)
    k_A = k[inside] / pixel_size_A
    return k_A, _detrend(np.log(power[inside] + 1e-30), k_A)


def model_rings(k_A: np.ndarray, defocus: Defocus, energy_eV: float, Cs_A: float) -> np.ndarray:
    """The detrended ``sin^2 chi`` of a fit over ``k_A`` (zeros where it found no rings)."""
    if defocus.magnitude_nm is None:
        return np.zeros_like(k_A)
    signed = np.array([(defocus.sign or 1) * defocus.magnitude_nm * 10])
    return _detrend(np.square(np.sin(_chi(k_A, signed, Cs_A, optics.wavelength_A(energy_eV)))), k_A)[0]


def _chi(k_A: np.ndarray, defocus_A: np.ndarray, Cs_A: float, wavelength_A: float) -> np.ndarray:
    """Phase aberration (defoci x frequencies), optics' convention: C10 = -defocus."""
    k2 = np.square(k_A)[None, :]
    return -np.pi * wavelength_A * defocus_A[:, None] * k2 + 0.5 * np.pi * wavelength_A**3 * Cs_A * k2 * k2


def fit_defocus(
    image: np.ndarray,
    pixel_size_A: float,
    energy_eV: float = 300e3,
    Cs_A: float = 0.0,
    band: tuple[float, float] = BAND,
    max_defocus_nm: float = 300.0,
) -> Defocus:
    """The defocus whose Thon rings best match ``image``'s spectrum (module docstring)."""
    if not pixel_size_A > 0:
        raise ValueError(f"pixel_size_A must be > 0, got {pixel_size_A}")
    wavelength_A = optics.wavelength_A(energy_eV)
    k_A, spectrum = ring_profile(image, pixel_size_A, band)
    below_nm = MIN_ZEROS / (wavelength_A * k_A[-1] ** 2) / 10  # MIN_ZEROS ring zeros inside the band (Cs = 0)
    magnitudes = np.geomspace(below_nm * 5, max_defocus_nm * 10, 4000)
    scores = {}
    for sign in (1, -1):
        model = _detrend(np.square(np.sin(_chi(k_A, sign * magnitudes, Cs_A, wavelength_A))), k_A)
        scores[sign] = _correlation(model, spectrum)
    best = {sign: int(np.nanargmax(s)) for sign, s in scores.items()}
    sign = max(best, key=lambda s: scores[s][best[s]])
    correlation = float(scores[sign][best[sign]])
    magnitude_A = magnitudes[best[sign]]
    zeros = np.abs(_chi(k_A[-1:], np.array([sign * magnitude_A]), Cs_A, wavelength_A)[0, 0]) // np.pi
    if correlation < MIN_CORRELATION or zeros < MIN_ZEROS:
        return Defocus(None, 0, correlation, None, below_nm)
    other = float(scores[-sign][best[-sign]])
    known = Cs_A > 0 and correlation - other > SIGN_MARGIN
    model = _detrend(np.square(np.sin(_chi(k_A, np.array([sign * magnitude_A]), Cs_A, wavelength_A))), k_A)[0]
    return Defocus(
        float(magnitude_A / 10), sign if known else 0, correlation, _resolution_A(model, spectrum, k_A), below_nm
    )


def _correlation(models: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    models = models - models.mean(axis=-1, keepdims=True)
    centred = spectrum - spectrum.mean()
    norms = np.linalg.norm(models, axis=-1) * np.linalg.norm(centred)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, models @ centred / norms, np.nan)


def _resolution_A(model: np.ndarray, spectrum: np.ndarray, k_A: np.ndarray, segments: int = 8) -> float:
    """1 / the highest frequency of the band segments whose rings still correlate (> MIN_CORRELATION)."""
    reached = k_A[0]
    for part in np.array_split(np.arange(len(k_A)), segments):
        if _correlation(model[part][None], spectrum[part])[0] > MIN_CORRELATION:
            reached = k_A[part[-1]]
    return float(1 / reached)


def dose_from_counts(image: np.ndarray, pixel_size_A: float, counts_per_electron: float) -> float:
    """Dose [e/A^2] from the mean counts of a bright-field image and the camera's conversion."""
    if not counts_per_electron > 0:
        raise ValueError(f"counts_per_electron must be > 0, got {counts_per_electron}")
    return float(np.mean(image) / counts_per_electron / pixel_size_A**2)


def dose_from_noise(image: np.ndarray, pixel_size_A: float) -> float:
    """Dose [e/A^2] estimated from the noise floor: electrons per pixel = mean^2 / variance of the
    white noise, the variance being the spectrum's plateau in ``NOISE_BAND`` (Poisson counts)."""
    k, power = radial_spectrum(image)
    variance = float(np.median(power[_in_band(k, NOISE_BAND)]))
    if not variance > 0:
        raise ValueError("no noise floor: the image's spectrum is empty near Nyquist")
    return float(np.mean(image) ** 2 / variance / pixel_size_A**2)


def domain_block(defoci: list[Defocus], doses: list[float], name: str = "matched") -> dict:
    """A study ``domains`` entry from the fits of a set of files: defocus mean and spread over the
    files whose rings were fitted (magnitudes; near-focus files count as 0), and the median dose."""
    magnitudes = [0.0 if d.magnitude_nm is None else d.magnitude_nm for d in defoci]
    signs = {d.sign for d in defoci if d.magnitude_nm is not None}
    sign = signs.pop() if len(signs) == 1 and 0 not in signs else 1
    block = {
        "structure_set": "CHANGE_ME",
        "defocus": {
            "mean_nm": round(sign * float(np.mean(magnitudes)), 2),
            "sigma_nm": round(float(np.std(magnitudes)), 2),
        },
    }
    if doses:
        block["dose"] = {"e_per_A2": round(float(np.median(doses)), 1)}
    return {name: block}


@dataclass(frozen=True)
class Conditions:
    """What :func:`match_file` read off one file: pixel size (and where it came from), defocus, dose."""

    path: str
    pixel_size_A: float
    pixel_size_from: str  # "file", "given" or "spacing"
    defocus: Defocus
    dose_e_per_A2: float
    dose_from: str  # "counts" or "noise floor (estimate)"

    def describe(self) -> str:
        return (
            f"{self.path}: pixel {self.pixel_size_A:.4g} A ({self.pixel_size_from}); {self.defocus.describe()}; "
            f"dose {self.dose_e_per_A2:.4g} e/A^2 ({self.dose_from})"
        )


def match_file(
    path: str | Path,
    energy_eV: float = 300e3,
    Cs_A: float = 0.0,
    pixel_size_A: float | None = None,
    spacing_A: float | None = None,
    counts_per_electron: float | None = None,
    plot: str | None = None,
) -> Conditions:
    """The imaging conditions of one single-image micrograph file (module docstring); the pixel
    size is ``pixel_size_A``, else the file's, else from ``spacing_A``; ValueError naming the file
    for a stack, a missing pixel size or an image too small. ``plot``: a PNG of the fit."""
    images, file_px = read_images(path)
    if len(images) != 1:
        raise ValueError(f"{path}: a stack of {len(images)} images; give one image per file")
    image = images[0]
    if pixel_size_A is not None:
        pixel, source = pixel_size_A, "given"
    elif file_px is not None:
        pixel, source = file_px, "file"
    elif spacing_A is not None:
        try:
            pixel, source = pixel_size_from_spacing(image, spacing_A), f"lattice spacing {spacing_A:g} A"
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    else:
        raise ValueError(f"{path}: the file records no pixel size; give --pixel-size or --spacing-A")
    try:
        defocus = fit_defocus(image, pixel, energy_eV, Cs_A)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if counts_per_electron is not None:
        dose, dose_source = dose_from_counts(image, pixel, counts_per_electron), "counts"
    else:
        dose, dose_source = dose_from_noise(image, pixel), "noise floor (estimate)"
    if plot is not None:
        plot_fit(image, pixel, defocus, energy_eV, Cs_A, plot, title=str(path))
    return Conditions(str(path), float(pixel), source, defocus, dose, dose_source)


def plot_fit(image, pixel_size_A: float, defocus: Defocus, energy_eV: float, Cs_A: float, path, title="") -> None:
    """PNG: the measured rings (detrended log spectrum) and the fitted model's, against frequency."""
    k_A, spectrum = ring_profile(image, pixel_size_A)
    model = model_rings(k_A, defocus, energy_eV, Cs_A)
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    ax = figure.subplots()
    ax.plot(k_A, spectrum / (np.std(spectrum) or 1), color="black", linewidth=1, label="measured (detrended log power)")
    if defocus.magnitude_nm is not None:
        ax.plot(
            k_A, model / (np.std(model) or 1), color="tab:orange", linewidth=1, label="fitted sin^2 chi (detrended)"
        )
    ax.set(xlabel="spatial frequency [1/A]", ylabel="rings (standardised)", title=f"{title}\n{defocus.describe()}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def sign_note(defoci: list[Defocus]) -> str:
    """What the domain's defocus sign rests on."""
    signs = {d.sign for d in defoci if d.magnitude_nm is not None}
    if signs and 0 not in signs and len(signs) == 1:
        return "defocus sign from the Cs term of the rings"
    return (
        "defocus sign unknown (the rings of +df and -df agree): mean_nm is written as underfocus; "
        "set its sign from the particles' contrast or the microscope's record"
    )


def nearest_domains(found: list[Conditions], study: Study, results: str | Path) -> list[str]:
    """Lines naming the study's simulated domains nearest to the files: by defocus (the files'
    mean fitted |df|, near focus as 0, against each domain's |mean_nm|; doses shown beside) and,
    where a domain's dataset exists under ``results``, by the OOD score of the files' images
    (resampled to the study's pixel size) against that dataset's val images (about 1 = alike)."""
    simulated = {name: d.shifts for name, d in study.domains.items() if not d.is_micrograph}
    if not simulated:
        return ["the study has no simulated domain"]
    df = float(np.mean([c.defocus.magnitude_nm or 0.0 for c in found]))
    dose = float(np.median([c.dose_e_per_A2 for c in found]))
    mean_nm = {name: abs(d.get("defocus", {}).get("mean_nm", 0.0)) for name, d in simulated.items()}
    best = min(simulated, key=lambda name: abs(mean_nm[name] - df))
    domain_dose = simulated[best].get("dose", {}).get("e_per_A2")
    lines = [
        f"nearest by defocus: {best} (|mean_nm| {mean_nm[best]:g} against the files' {df:.1f} nm; "
        f"dose {domain_dose} against the files' {dose:.4g} e/A^2, {found[0].dose_from})"
    ]
    pixel = study.image.pixel_size_A
    images = []
    for c in found:
        image = read_images(c.path)[0][0]
        factor = c.pixel_size_A / pixel
        images.append(resample(image, (round(image.shape[0] * factor), round(image.shape[1] * factor))))
    scores = {}
    for name in simulated:
        path = Path(results) / "datasets" / f"{name}.h5"
        if path.exists():
            reference = ood.reference(data.read_split(path, "val")[0], pixel)
            scores[name] = float(np.mean([ood.score(image, reference) for image in images]))
    if not scores:
        return [*lines, f"no simulated domain's dataset under {Path(results) / 'datasets'}: no spectrum comparison"]
    ranked = sorted(scores, key=scores.get)
    listed = ", ".join(f"{name} {scores[name]:.2f}" for name in ranked)
    return [*lines, f"nearest by spectrum (OOD score, about 1 = alike): {ranked[0]} ({listed})"]
