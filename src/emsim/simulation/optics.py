"""Objective-lens optics on cached exit waves: CTF, intensity, downsampling, dose noise, blur.

Array convention (abTEM's): a 2-D array is indexed ``[x, y]``; the azimuth ``phi`` of a
spatial frequency is measured from the first axis (x) towards the second (y).
Fourier-space waves are ``scipy.fft.fft2`` of the real-space wave: unnormalised, unshifted
(zero frequency at ``[0, 0]``). Spatial frequencies ``k`` are in 1/A (no 2 pi).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.constants as const
import scipy.fft as sfft

from emsim.study.settings import Image, Microscope


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength [A] at kinetic energy ``energy_eV``."""
    if energy_eV <= 0:
        raise ValueError(f"energy_eV must be positive, got {energy_eV}")
    energy_J = energy_eV * const.e
    momentum = np.sqrt(energy_J * (2 * const.m_e * const.c**2 + energy_J)) / const.c
    return float(const.h / momentum * 1e10)


def scherzer_defocus_A(Cs_A: float, energy_eV: float) -> float:
    """Scherzer defocus [A], positive = underfocus: sqrt(3/2 Cs lambda)."""
    return float(np.sign(Cs_A) * np.sqrt(1.5 * abs(Cs_A) * wavelength_A(energy_eV)))


@dataclass(frozen=True)
class Aberrations:
    """The objective lens of one image: phase aberrations [A, rad] in abTEM's polar convention,
    and its aperture.

    chi(k, phi) = pi lambda k^2 (C10 + C12 cos 2(phi - phi12)) + pi/2 lambda^3 k^4 C30.
    ``C10_A = -defocus`` (positive defocus = underfocus), ``C30_A = Cs``; ``aperture_mrad``: the
    objective aperture's semi-angle (scattering beyond lambda k > aperture is removed, a hard edge
    as abTEM's ``CTF(semiangle_cutoff, soft=False)``), 0 = none.
    """

    C10_A: float
    C12_A: float = 0.0
    phi12_rad: float = 0.0
    C30_A: float = 0.0
    aperture_mrad: float = 0.0

    @property
    def defocus_A(self) -> float:
        """Defocus [A], positive = underfocus."""
        return -self.C10_A

    @classmethod
    def from_microscope(
        cls, microscope: Microscope, defocus_A: float, C12_A: float = 0.0, phi12_rad: float = 0.0
    ) -> Aberrations:
        """Aberrations of ``microscope`` (its ``Cs_A``) at ``defocus_A`` (positive = underfocus)."""
        return cls(C10_A=-defocus_A, C12_A=C12_A, phi12_rad=phi12_rad, C30_A=microscope.Cs_A)


@dataclass(frozen=True)
class KGrid:
    """Spatial-frequency grid of an FFT: ``k2`` = |k|^2 [1/A^2], ``cos2phi``/``sin2phi`` of the azimuth."""

    k2: np.ndarray
    cos2phi: np.ndarray
    sin2phi: np.ndarray


@functools.lru_cache(maxsize=8)
def k_grid(shape: tuple[int, int], sampling_A: float) -> KGrid:
    """Cached float32 k-grid for an unshifted FFT of ``shape`` at real-space ``sampling_A``."""
    kx = np.fft.fftfreq(shape[0], sampling_A)[:, None]
    ky = np.fft.fftfreq(shape[1], sampling_A)[None, :]
    k2 = kx**2 + ky**2
    with np.errstate(invalid="ignore", divide="ignore"):
        cos2phi = np.where(k2 > 0, (kx**2 - ky**2) / k2, 1.0)
        sin2phi = np.where(k2 > 0, 2 * kx * ky / k2, 0.0)
    arrays = [a.astype(np.float32) for a in (k2, cos2phi, sin2phi)]
    for a in arrays:
        a.flags.writeable = False
    return KGrid(*arrays)


def ctf(
    grid: KGrid,
    aberrations: Aberrations,
    energy_eV: float,
    focal_spread_A: float = 0.0,
    angular_spread_mrad: float = 0.0,
) -> np.ndarray:
    """Coherent transfer function exp(-i chi) times the partial-coherence envelopes and the
    objective aperture (complex64).

    Temporal envelope exp(-(pi lambda focal_spread k^2 / 2)^2), ``focal_spread_A`` being the
    1/e width; spatial envelope exp(-(pi theta)^2 |grad_k chi / 2 pi|^2), ``theta`` the
    angular spread [rad]. Both as in abTEM's ``CTF``.
    """
    lam = wavelength_A(energy_eV)
    k2 = grid.k2
    cos_astig = grid.cos2phi * np.float32(np.cos(2 * aberrations.phi12_rad))
    cos_astig += grid.sin2phi * np.float32(np.sin(2 * aberrations.phi12_rad))
    defocus_term = np.float32(aberrations.C10_A) + np.float32(aberrations.C12_A) * cos_astig
    chi = np.float32(np.pi * lam) * k2 * defocus_term
    chi += np.float32(0.5 * np.pi * lam**3 * aberrations.C30_A) * k2 * k2
    envelope = None
    if focal_spread_A:
        envelope = np.exp(-np.square(np.float32(0.5 * np.pi * lam * focal_spread_A) * k2))
    if angular_spread_mrad:
        spatial = _spatial_envelope(grid, aberrations, lam, defocus_term, cos_astig, angular_spread_mrad)
        envelope = spatial if envelope is None else envelope * spatial
    if aberrations.aperture_mrad:
        inside = (k2 * np.float32(lam**2) < np.float32(aberrations.aperture_mrad * 1e-3) ** 2).astype(np.float32)
        envelope = inside if envelope is None else envelope * inside
    out = np.empty(k2.shape, np.complex64)
    out.real = np.cos(chi)
    out.imag = -np.sin(chi)
    if envelope is not None:
        out *= envelope
    return out


def _spatial_envelope(grid, aberrations, lam, defocus_term, cos_astig, angular_spread_mrad):
    """exp(-(pi theta)^2 (|d chi/d k|^2 + |d chi/(k d phi)|^2) / (2 pi)^2), float32."""
    k = np.sqrt(grid.k2)
    radial = (defocus_term + np.float32(aberrations.C30_A * lam**2) * grid.k2) * k
    sin_astig = grid.sin2phi * np.float32(np.cos(2 * aberrations.phi12_rad))
    sin_astig -= grid.cos2phi * np.float32(np.sin(2 * aberrations.phi12_rad))
    azimuthal = np.float32(aberrations.C12_A) * sin_astig * k
    scale = np.float32((np.pi * angular_spread_mrad * 1e-3) ** 2)
    return np.exp(-scale * (radial * radial + azimuthal * azimuthal))


def image_from_waves(
    fourier_waves: np.ndarray,
    sampling_A: float,
    aberrations: Aberrations,
    microscope: Microscope,
    pixel_size_A: float,
    size_px: int,
    downsample: str = "intensity",
) -> np.ndarray:
    """HRTEM intensity (size_px, size_px) float32, vacuum = 1, from Fourier-space exit waves.

    ``fourier_waves``: (P, G, G) or (G, G) ``fft2`` of the exit waves, one per frozen-phonon
    configuration (the cell must be ``size_px * pixel_size_A`` wide). The CTF is applied per
    configuration and the intensities are averaged. ``downsample`` says where the grid goes from
    ``sampling_A`` to ``pixel_size_A``: ``intensity`` (the CTF acts on the full waves, the mean
    intensity is Fourier-cropped: no aliasing) or ``wave`` (the seed study's order: each exit wave
    is Fourier-cropped first, then the CTF and the intensity on the coarse grid, where the
    intensity's frequencies above the new Nyquist fold back). ``microscope`` gives energy_eV,
    focal_spread_A and angular_spread_mrad; Cs comes from ``aberrations.C30_A``.
    """
    fourier_waves = np.asarray(fourier_waves)
    if fourier_waves.ndim == 2:
        fourier_waves = fourier_waves[None]
    check_extent(fourier_waves.shape[-2:], sampling_A, pixel_size_A, size_px)
    if downsample == "wave":
        fourier_waves, sampling_A = fourier_crop(fourier_waves, size_px), pixel_size_A
    elif downsample != "intensity":
        raise ValueError(f"downsample must be 'intensity' or 'wave', got {downsample!r}")
    shape = fourier_waves.shape[-2:]
    transfer = ctf(
        k_grid(shape, sampling_A),
        aberrations,
        microscope.energy_eV,
        microscope.focal_spread_A,
        microscope.angular_spread_mrad,
    )
    intensity = np.zeros(shape, np.float32)
    for wave in fourier_waves:
        real_space = sfft.ifft2(wave * transfer, overwrite_x=True)
        intensity += real_space.real**2 + real_space.imag**2
    intensity /= len(fourier_waves)
    return fourier_downsample(intensity, size_px)


def cell_A(image: Image) -> float:
    """Side [A] of the simulated square cell: the image window (``size_px`` x ``pixel_size_A``)
    plus ``padding_A`` on every side. The window is cut from the cell's centre after the CTF, so
    that detail the lens moves by up to ``padding_A`` does not wrap around the periodic cell."""
    return image.size_px * image.pixel_size_A + 2 * image.padding_A


def cell_px(image: Image) -> int:
    """Pixels across the padded cell at the image pixel size."""
    return int(round(cell_A(image) / image.pixel_size_A))


def crop_window(image: np.ndarray, size_px: int) -> np.ndarray:
    """The central (size_px, size_px) window of the last two axes (the image field of view)."""
    start = (image.shape[-1] - size_px) // 2
    if start < 0 or image.shape[-2] != image.shape[-1]:
        raise ValueError(f"cannot cut a {size_px} px window from an image of shape {image.shape}")
    return image[..., start : start + size_px, start : start + size_px]


def information_limit_k(energy_eV: float, focal_spread_A: float) -> float:
    """Spatial frequency [1/A] where the temporal envelope falls to exp(-2); inf without focal spread."""
    if focal_spread_A <= 0:
        return np.inf
    return float(np.sqrt(2 * np.sqrt(2) / (np.pi * wavelength_A(energy_eV) * focal_spread_A)))


def delocalisation_A(k: float, defocus_A: float, Cs_A: float, energy_eV: float) -> float:
    """How far [A] the lens moves detail at spatial frequency ``k``: |grad_k chi| / 2 pi =
    lambda k (|defocus| + |Cs| lambda^2 k^2) (the worst azimuth for ``defocus`` = |C10| + |C12|)."""
    lam = wavelength_A(energy_eV)
    return float(lam * k * (abs(defocus_A) + abs(Cs_A) * lam**2 * k**2))


def check_extent(shape, sampling_A: float, pixel_size_A: float, size_px: int) -> None:
    """ValueError unless a square (G, G) grid at ``sampling_A`` spans size_px * pixel_size_A."""
    extent_A = shape[0] * sampling_A
    if shape[0] != shape[1] or not np.isclose(extent_A, size_px * pixel_size_A, rtol=1e-6):
        raise ValueError(
            f"waves {shape} at sampling_A={sampling_A} do not cover image.size_px={size_px} x "
            f"image.pixel_size_A={pixel_size_A} ({size_px * pixel_size_A} A); the cell must be square"
        )


def fourier_crop(fourier_waves: np.ndarray, size_px: int) -> np.ndarray:
    """Unshifted ``fft2`` spectra (..., G, G) cut to their (..., size_px, size_px) lowest
    frequencies (``fftfreq`` order), scaled so the real-space values are kept (as abTEM's
    ``Waves.downsample(gpts=...)``, normalization ``values``)."""
    n = fourier_waves.shape[-1]
    if size_px % 2 or size_px > n:
        raise ValueError(f"size_px must be even and <= {n}, got {size_px}")
    keep = np.r_[0 : size_px // 2, n - size_px // 2 : n]
    return fourier_waves[..., keep[:, None], keep[None, :]] * np.float32((size_px / n) ** 2)


def fourier_downsample(image: np.ndarray, size_px: int) -> np.ndarray:
    """Real (G, G) image to (size_px, size_px) by cropping its spectrum (values preserved), float32.

    Same result as abTEM's ``Images.interpolate`` (crop, inverse FFT, real part): the Nyquist
    frequency of the new grid gets the mean of its two aliases +-size_px/2. An image already of
    ``size_px`` is returned as it is.
    """
    if size_px == image.shape[0]:
        return np.asarray(image, np.float32)
    if size_px % 2 or size_px > image.shape[0]:
        raise ValueError(f"size_px must be even and <= {image.shape[0]}, got {size_px}")
    spectrum = sfft.rfft2(image, norm="forward")
    half = size_px // 2
    cropped = np.concatenate([spectrum[:half, : half + 1], spectrum[-half:, : half + 1]])
    cropped[half] = 0.5 * (spectrum[half, : half + 1] + spectrum[-half, : half + 1])
    cropped[half, half] = spectrum[half, half]
    return sfft.irfft2(cropped, s=(size_px, size_px), norm="forward").astype(np.float32)


def poisson_noise(
    intensity: np.ndarray, dose_e_per_A2: float, pixel_size_A: float, rng: np.random.Generator
) -> np.ndarray:
    """Detector counts Poisson(intensity * dose * pixel area), float32; negative intensity counts as 0."""
    if dose_e_per_A2 <= 0:
        raise ValueError(f"dose_e_per_A2 must be positive, got {dose_e_per_A2}")
    expected = np.maximum(intensity, 0) * np.float32(dose_e_per_A2 * pixel_size_A**2)
    return rng.poisson(expected).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Periodic Gaussian blur of the last two axes: multiply the spectrum by the MTF
    exp(-2 pi^2 sigma^2 k^2), k in cycles/px. Returns float32."""
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    image = np.asarray(image, np.float32)
    if sigma_px == 0:
        return image.copy()
    shape = image.shape[-2:]
    kx = np.fft.fftfreq(shape[0])[:, None]
    ky = np.fft.rfftfreq(shape[1])[None, :]
    mtf = np.exp(-2 * np.pi**2 * sigma_px**2 * (kx**2 + ky**2)).astype(np.float32)
    spectrum = sfft.rfft2(image) * mtf
    return sfft.irfft2(spectrum, s=shape).astype(np.float32)
