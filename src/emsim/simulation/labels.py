"""Ground-truth particle masks, from the phase the particles alone impart to the beam.

Three methods (config ``labels.method``); the same morphology (closing, hole filling, blur) makes
every mask solid:

- ``phase`` (the seed study's): the phase of the particle-in-vacuum exit wave (multislice),
  thresholded;
- ``potential``: sigma_e times the particles' projected potential (no dynamical scattering),
  thresholded like the phase; agrees with ``phase`` to IoU 0.95-1.00 (docs/physics.md);
- ``atoms``: the projected atom positions dilated by ``atom_radius_A``: the particle outline
  itself, where both thresholds fall 1-5 A inside it (the rim's thin columns stay below pi/16).

Arrays are indexed ``[x, y]`` (abTEM's convention, see ``emsim.simulation.optics``); pixel ``(i, j)`` of an
image with pixel size ``p`` sits at ``(i p, j p)``.
"""

from __future__ import annotations

import abtem
import numpy as np
import scipy.fft as sfft
from abtem.core.energy import energy2sigma
from scipy import ndimage

from emsim.simulation import optics
from emsim.study.settings import Labels, Simulation

METHODS = ("phase", "potential", "atoms")


def label(
    vacuum_wave: np.ndarray,
    particles,
    sim: Simulation,
    energy_eV: float,
    pixel_size_A: float,
    size_px: int,
    labels: Labels,
) -> np.ndarray:
    """Particle mask (size_px, size_px) uint8 of one scene by ``labels.method`` (see module docstring):
    ``vacuum_wave`` (G, G) is the static particle-in-vacuum exit wave, ``particles`` the ASE atoms
    that made it."""
    if labels.method == "phase":
        return label_from_vacuum_wave(
            vacuum_wave,
            sim.sampling_A,
            pixel_size_A,
            size_px,
            labels.threshold_rad,
            labels.lowpass_sigma_A,
            labels.closing_A,
            labels.blur_A,
        )
    if labels.method == "potential":
        phase = _potential_phase(particles, sim, energy_eV, pixel_size_A, size_px, labels.lowpass_sigma_A)
        return mask_from_phase(phase, pixel_size_A, labels.threshold_rad, labels.closing_A, labels.blur_A)
    if labels.method == "atoms":
        outline = projected_atom_mask(particles.positions, particles.cell[0, 0], size_px, labels.atom_radius_A)
        return solid_mask(outline, pixel_size_A, labels.closing_A, labels.blur_A)
    raise ValueError(f"labels.method: {labels.method!r}; allowed: {', '.join(METHODS)}")


def _potential_phase(
    particles, sim: Simulation, energy_eV: float, pixel_size_A: float, size_px: int, lowpass_sigma_A: float
):
    """sigma_e V_proj of static ``particles`` (abTEM potential, the multislice's sampling and
    slicing), low-passed and resampled to (size_px, size_px) like the exit-wave phase."""
    gpts = int(round(particles.cell[0, 0] / sim.sampling_A))
    with abtem.config.set({"device": "cpu", "diagnostics.progress_bar": False}):
        potential = abtem.Potential(particles, gpts=gpts, slice_thickness=sim.slice_thickness_A)
        projected = np.asarray(potential.project().compute().array, np.float64)
    optics.check_extent(projected.shape, sim.sampling_A, pixel_size_A, size_px)
    return _lowpass_resample(energy2sigma(energy_eV) * projected, sim.sampling_A, lowpass_sigma_A, size_px).real


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
    return mask_from_phase(np.angle(smooth), pixel_size_A, threshold_rad, closing_A, blur_A)


def mask_from_phase(
    phase: np.ndarray,
    pixel_size_A: float,
    threshold_rad: float = np.pi / 16,
    closing_A: float = 1.5,
    blur_A: float = 1.0,
) -> np.ndarray:
    """Phase map (rad) -> solid mask uint8: threshold at ``threshold_rad``, then :func:`solid_mask`."""
    return solid_mask(phase > threshold_rad, pixel_size_A, closing_A, blur_A)


def solid_mask(mask: np.ndarray, pixel_size_A: float, closing_A: float, blur_A: float) -> np.ndarray:
    """Periodic closing with a disk of radius ``closing_A``, hole filling, Gaussian blur ``blur_A``
    and re-threshold at 0.5: a solid uint8 mask."""
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


def projected_atom_mask(positions_A: np.ndarray, cell_xy_A: float, size_px: int, radius_A: float) -> np.ndarray:
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
