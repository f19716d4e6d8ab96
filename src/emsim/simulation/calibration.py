"""Zero-defocus calibration: the defocus of minimum contrast of the particles in vacuum.

As the seed study defines it: the defocus at which the image of the particles alone (their
exit wave through the microscope's lens, envelopes included) has the least variance. Defocus is
positive for underfocus, measured from the plane the wave is referenced to (the particles' exit
plane in emsim).

The search is exact and cheap: the wave's spectrum is cropped to the frequencies that the
temporal envelope passes above ``ENVELOPE_CUTOFF`` (every image is computed on the smallest grid
that holds them), and with a known particle depth the minimum is found by a bounded Brent search
(golden section and parabolic steps, to ``TOLERANCE_A``) over the particles' depth plus
``MARGIN_A`` on both sides, where the variance has a single wide basin when Cs is small (about 10
images instead of the ~420 of a 1 A + 0.1 A grid search). A minimum on the edge of that bracket,
or no depth given, falls back to the grid search over the whole search range: 1 A steps, then
bounded Brent within +-1 A of the best.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import optimize

from emsim.simulation import optics
from emsim.study.settings import Microscope

ENVELOPE_CUTOFF = 1e-3
MARGIN_A = 10.0
TOLERANCE_A = 0.05


class CalibrationError(ValueError):
    """The minimum of contrast lies on the edge of the search range."""


def zero_defocus_A(
    vacuum_wave: np.ndarray,
    sampling_A: float,
    microscope: Microscope,
    search_A: tuple[float, float] = (-200.0, 200.0),
    depth_A: float | None = None,
) -> float:
    """Defocus [A] of minimum image variance of a real-space (G, G) particle-in-vacuum wave.

    ``microscope`` is the lens the wave is imaged through; ``depth_A`` is
    the depth of the particle cell above the wave's reference plane (the search starts there).
    A minimum within ``TOLERANCE_A`` of either end of ``search_A`` raises :class:`CalibrationError`.
    """
    lo, hi = (float(v) for v in search_A)
    if not lo < hi:
        raise ValueError(f"search_A must be (low, high) with low < high, got {search_A}")
    spectrum, sampling_A = _lens_limited_spectrum(np.asarray(vacuum_wave), sampling_A, microscope)
    variance = _variance_at(spectrum, sampling_A, microscope)
    best = None
    if depth_A is not None:
        bracket = (max(lo, -MARGIN_A), min(hi, depth_A + MARGIN_A))
        best = _bounded_minimum(variance, *bracket)
        if any(abs(best - edge) <= TOLERANCE_A and lo < edge < hi for edge in bracket):
            best = None
    if best is None:
        coarse = np.arange(np.ceil(lo), np.floor(hi) + 1.0)
        start = coarse[np.argmin([variance(d) for d in coarse])]
        best = _bounded_minimum(variance, max(lo, start - 1.0), min(hi, start + 1.0))
    if min(best - lo, hi - best) <= TOLERANCE_A:
        raise CalibrationError(
            f"minimum contrast at defocus {best:.1f} A, the edge of the search range {lo:g}..{hi:g} A"
        )
    return best


def _variance_at(spectrum: np.ndarray, sampling_A: float, microscope: Microscope):
    """``variance(defocus_A)``: variance of the image intensity of ``spectrum`` through the lens."""
    grid = optics.k_grid(spectrum.shape, sampling_A)
    energy_eV = microscope.energy_eV
    envelopes = microscope.focal_spread_A, microscope.angular_spread_mrad
    if not envelopes[1]:  # defocus enters only the phase: apply the rest once
        spectrum = spectrum * optics.ctf(
            grid, optics.Aberrations.from_microscope(microscope, 0.0), energy_eV, *envelopes
        )
        phase_per_A = (np.pi * optics.wavelength_A(energy_eV) * grid.k2).astype(np.float32)

    def variance(defocus_A: float) -> float:
        if envelopes[1]:
            transfer = optics.ctf(
                grid, optics.Aberrations.from_microscope(microscope, defocus_A), energy_eV, *envelopes
            )
        else:  # exp(-i chi) with C10 = -defocus; cos and sin are ~7x faster than a complex exp
            phase = phase_per_A * np.float32(defocus_A)
            transfer = np.empty(phase.shape, np.complex64)
            transfer.real, transfer.imag = np.cos(phase), np.sin(phase)
        wave = sfft.ifft2(spectrum * transfer, overwrite_x=True, workers=1)
        return float(np.var(wave.real**2 + wave.imag**2))

    return variance


def _bounded_minimum(function, lo: float, hi: float) -> float:
    result = optimize.minimize_scalar(function, bounds=(lo, hi), method="bounded", options={"xatol": TOLERANCE_A})
    return float(result.x)


def _lens_limited_spectrum(wave: np.ndarray, sampling_A: float, microscope: Microscope) -> tuple[np.ndarray, float]:
    """Spectrum of ``wave`` (unnormalised, scaled so that ifft2 gives the wave) cropped to the
    smallest fast FFT size holding every frequency that is nonzero and that the temporal
    envelope passes above ``ENVELOPE_CUTOFF``; and the matching real-space sampling [A]."""
    n = wave.shape[0]
    spectrum = sfft.fft2(wave, norm="forward", workers=1)
    index = np.abs(np.fft.fftfreq(n, 1.0 / n)).astype(int)
    nonzero = np.abs(spectrum) > 1e-6 * np.abs(spectrum).max()
    reach = max(index[nonzero.any(axis=1)].max(), index[nonzero.any(axis=0)].max())
    focal_spread_A = microscope.focal_spread_A
    if focal_spread_A > 0:
        lam = optics.wavelength_A(microscope.energy_eV)
        k_max = np.sqrt(2 * np.sqrt(np.log(1 / ENVELOPE_CUTOFF)) / (np.pi * lam * focal_spread_A))
        reach = min(reach, int(np.ceil(k_max * n * sampling_A)))
    size = min(sfft.next_fast_len(2 * reach + 2), n)
    if size >= n:
        return spectrum * n * n, sampling_A
    half = size // 2
    rows = np.r_[0 : size - half, n - half : n]
    return spectrum[np.ix_(rows, rows)] * size * size, sampling_A * n / size
