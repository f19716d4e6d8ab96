"""Ground-truth masks and the zero-defocus calibration, from the particle-in-vacuum exit wave.

Arrays are indexed ``[x, y]`` (abTEM's convention, see ``emsim.optics``); pixel ``(i, j)`` of an
image with pixel size ``p`` sits at ``(i p, j p)``.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from emsim import optics


def label_from_vacuum_wave(
    wave: np.ndarray,
    sampling_A: float,
    pixel_size_A: float,
    size_px: int,
    threshold_rad: float = np.pi / 16,
    lowpass_sigma_A: float = 0.5,
    closing_A: float = 1.5,
    blur_A: float = 1.0,
) -> np.ndarray:
    """Solid particle mask (size_px, size_px) uint8 {0, 1} from a real-space (G, G) vacuum exit wave.

    The complex wave is low-passed (Gaussian, ``lowpass_sigma_A``) and resampled to the image
    grid in Fourier space; its phase is thresholded at ``threshold_rad``, closed with a disk of
    radius ``closing_A``, hole-filled, blurred (Gaussian ``blur_A``) and re-thresholded at 0.5.
    All morphology is periodic, like the cell.
    """
    wave = np.asarray(wave)
    optics.check_extent(wave.shape, sampling_A, pixel_size_A, size_px)
    smooth = _lowpass_resample(wave, sampling_A, lowpass_sigma_A, size_px)
    mask = np.angle(smooth) > threshold_rad
    mask = _periodic_closing(mask, closing_A / pixel_size_A)
    mask = _periodic_fill_holes(mask)
    blurred = optics.gaussian_blur(mask.astype(np.float32), blur_A / pixel_size_A)
    return (blurred > 0.5).astype(np.uint8)


def _lowpass_resample(wave, sampling_A, sigma_A, size_px):
    """Gaussian low-pass of a complex wave, Fourier-cropped to (size_px, size_px)."""
    grid = optics.k_grid(wave.shape, sampling_A)
    spectrum = sfft.fft2(wave, norm="forward") * np.exp(-2 * np.pi**2 * sigma_A**2 * grid.k2)
    half = size_px // 2
    rows = np.r_[0:half, wave.shape[0] - half : wave.shape[0]]
    cropped = spectrum[np.ix_(rows, rows)]
    return sfft.ifft2(cropped, norm="forward")


def _disk(radius_px: float) -> np.ndarray:
    r = int(np.floor(radius_px))
    x, y = np.ogrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= radius_px**2


def _periodic_closing(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary closing with a disk, periodic boundaries."""
    if radius_px < 1:
        return mask
    pad = 2 * int(np.ceil(radius_px))
    padded = np.pad(mask, pad, mode="wrap")
    closed = ndimage.binary_closing(padded, structure=_disk(radius_px))
    return closed[pad:-pad, pad:-pad]


def _periodic_fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions that do not connect to the background across the periodic cell."""
    tiled = np.tile(mask, (3, 3))
    filled = ndimage.binary_fill_holes(tiled)
    n, m = mask.shape
    return filled[n : 2 * n, m : 2 * m]


def projected_atom_mask(
    positions_A: np.ndarray, cell_xy_A: float, size_px: int, radius_A: float
) -> np.ndarray:
    """(size_px, size_px) bool: pixels within ``radius_A`` of an atom's (x, y), periodic."""
    positions_A = np.asarray(positions_A, dtype=np.float64)
    pixel_A = cell_xy_A / size_px
    mask = np.zeros((size_px, size_px), bool)
    if len(positions_A) == 0:
        return mask
    reach = int(np.ceil(radius_A / pixel_A)) + 1
    offsets = np.arange(-reach, reach + 1)
    centre = np.rint(positions_A[:, :2] / pixel_A).astype(np.int64)
    for di in offsets:
        for dj in offsets:
            idx = centre + (di, dj)
            dist2 = ((idx * pixel_A - positions_A[:, :2]) ** 2).sum(axis=1)
            hit = idx[dist2 <= radius_A**2] % size_px
            mask[hit[:, 0], hit[:, 1]] = True
    return mask


def zero_defocus_A(
    vacuum_wave: np.ndarray,
    sampling_A: float,
    microscope: dict,
    search_A: tuple[float, float] = (-200.0, 200.0),
) -> float:
    """Defocus [A] of minimum contrast (image variance) of the particles in vacuum.

    Grid search over ``search_A`` in 1 A steps, then 0.1 A steps within +-1 A of the best.
    Images use the microscope's Cs and envelopes; they are evaluated on the smallest grid
    that holds the wave's band limit (exact intensity samples, cheaper than the full grid).
    """
    lo, hi = search_A
    if not lo < hi:
        raise ValueError(f"search_A must be (low, high) with low < high, got {search_A}")
    spectrum, sampling_A = _band_limited_spectrum(np.asarray(vacuum_wave), sampling_A)
    grid = optics.k_grid(spectrum.shape, sampling_A)

    def variance(defocus_A: float) -> float:
        aberrations = optics.Aberrations.from_microscope(microscope, defocus_A)
        transfer = optics.ctf(
            grid,
            aberrations,
            microscope["energy_eV"],
            microscope.get("focal_spread_A", 0.0),
            microscope.get("angular_spread_mrad", 0.0),
        )
        wave = sfft.ifft2(spectrum * transfer, overwrite_x=True)
        return float(np.var(wave.real**2 + wave.imag**2))

    coarse = np.arange(np.ceil(lo), np.floor(hi) + 1, 1.0)
    best = coarse[np.argmin([variance(d) for d in coarse])]
    fine = best + np.arange(-10, 11) * 0.1
    fine = fine[(fine >= lo) & (fine <= hi)]
    return float(fine[np.argmin([variance(d) for d in fine])])


def _band_limited_spectrum(wave: np.ndarray, sampling_A: float) -> tuple[np.ndarray, float]:
    """Spectrum of ``wave`` cropped to the smallest fast FFT size holding all its nonzero
    frequencies, and the matching real-space sampling [A]."""
    spectrum = sfft.fft2(wave, norm="forward")
    n = wave.shape[0]
    index = np.abs(np.fft.fftfreq(n, 1.0 / n)).astype(int)
    nonzero = np.abs(spectrum) > 1e-6 * np.abs(spectrum).max()
    reach = max(index[nonzero.any(axis=1)].max(), index[nonzero.any(axis=0)].max())
    size = min(sfft.next_fast_len(2 * reach + 2), n)
    if size >= n:
        return spectrum * n * n, sampling_A
    half = size // 2
    rows = np.r_[0 : size - half, n - half : n]
    return spectrum[np.ix_(rows, rows)] * size * size, sampling_A * n / size
