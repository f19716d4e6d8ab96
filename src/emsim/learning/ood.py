"""Out-of-distribution score of an input image against a model's training inputs.

Description of the training inputs (stored in the model meta under ``inputs``): the pixel size
of the training domain and the mean and standard deviation, over the training images, of the
radially averaged log10 power spectrum of each standardised, Hann-windowed image in
``SPECTRUM_BINS`` rings of spatial frequency (0 to 0.5 cycles/px, DC excluded). Per-image
standardisation removes brightness and contrast, so what remains is what the network sees:
contrast-transfer rings (defocus), noise floor (dose), lattice fringes (structure).

Score of an image: the RMS over rings of its z-score against that description (about 1 in
distribution). An image larger than the training images is cut into tiles of the training size
whose power spectra are averaged. The default threshold ``DEFAULT_THRESHOLD`` is replaced by one
calibrated on a study's own domains with :func:`emsim.learning.ood_check.study_scores`
(``emsim ood results``).
"""

from __future__ import annotations

import numpy as np

from emsim import data

SPECTRUM_BINS = 24
MIN_STD = 0.05  # log10 units: floor of a ring's spread (few training images)
DEFAULT_THRESHOLD = 3.0


def log_spectrum(image: np.ndarray, tile_px: int | None = None) -> np.ndarray:
    """Radially averaged log10 power spectrum (``SPECTRUM_BINS``,) of one raw image, averaged
    over non-overlapping ``tile_px`` tiles (the whole image if None or larger)."""
    h, w = image.shape
    th, tw = (h, w) if tile_px is None else (min(tile_px, h), min(tile_px, w))
    tiles = np.stack(
        [
            image[top : top + th, left : left + tw]
            for top in range(0, h - th + 1, th)
            for left in range(0, w - tw + 1, tw)
        ]
    )
    window = np.hanning(th)[:, None] * np.hanning(tw)[None, :]
    power = np.abs(np.fft.fft2(data.standardize(tiles) * window)) ** 2 / (window**2).sum()
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(th), np.fft.fftfreq(tw), indexing="ij"))
    ring = np.floor(radius / 0.5 * SPECTRUM_BINS).astype(int)
    keep = (radius > 0) & (ring < SPECTRUM_BINS)
    counts = np.bincount(ring[keep], minlength=SPECTRUM_BINS)
    sums = np.bincount(ring[keep], weights=power.mean(axis=0)[keep], minlength=SPECTRUM_BINS)
    return np.log10(sums / np.maximum(counts, 1) + 1e-12)


def reference(images: np.ndarray, pixel_size_A: float | None) -> dict:
    """Description of training images (N, H, W): pixel size, image size, ring statistics."""
    spectra = np.stack([log_spectrum(image) for image in images])
    return {
        "pixel_size_A": pixel_size_A,
        "size_px": int(max(images.shape[1:])),
        "spectrum_mean": spectra.mean(axis=0).tolist(),
        "spectrum_std": np.maximum(spectra.std(axis=0), MIN_STD).tolist(),
        "threshold": DEFAULT_THRESHOLD,
    }


def describe(run: dict, images: np.ndarray) -> dict:
    """The ``inputs`` entry of a model's meta: :func:`reference` of its training images, with
    the pixel size of its (first) training dataset (None if that file records none)."""
    attrs = data.read_attrs(run.get("dataset") or run["datasets"][0])
    return reference(images, attrs.get("config", {}).get("image", {}).get("pixel_size_A"))


def score(image: np.ndarray, ref: dict) -> float:
    """RMS z-score of ``image``'s ring spectrum against ``ref`` (at the model's pixel size)."""
    z = (log_spectrum(image, ref["size_px"]) - np.asarray(ref["spectrum_mean"])) / np.asarray(ref["spectrum_std"])
    return float(np.sqrt(np.mean(z**2)))
