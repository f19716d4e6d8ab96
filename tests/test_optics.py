"""Optics physics against abTEM and against closed forms: CTF, downsampling, dose noise, blur."""

import abtem
import numpy as np
import pytest
import scipy.fft as sfft
from ase.cluster import FaceCenteredCubic

from emsim.simulation import optics
from emsim.study.settings import Microscope

ENERGY_EV = 300e3
SAMPLING_A = 0.1
CELL_A = 25.6


@pytest.fixture(scope="module")
def exit_wave():
    """Real abTEM exit wave (256, 256) of a small Au cluster, 0.1 A sampling."""
    cluster = FaceCenteredCubic("Au", [(1, 0, 0), (1, 1, 0), (1, 1, 1)], [3, 4, 3], latticeconstant=4.078)
    cluster.rotate(20, "z")
    cluster.positions += np.array([CELL_A / 2, CELL_A / 2, 0]) - cluster.positions.mean(0)
    cluster.positions[:, 2] += 1 - cluster.positions[:, 2].min()
    cluster.cell = [CELL_A, CELL_A, cluster.positions[:, 2].max() + 1]
    cluster.pbc = (True, True, False)
    with abtem.config.set({"diagnostics.progress_bar": False}):
        potential = abtem.Potential(cluster, gpts=256, slice_thickness=2.0)
        waves = abtem.PlaneWave(energy=ENERGY_EV).multislice(potential, lazy=False)
    return np.asarray(waves.array, np.complex64)


def test_wavelength_matches_abtem():
    assert optics.wavelength_A(ENERGY_EV) == pytest.approx(abtem.core.energy.energy2wavelength(ENERGY_EV), rel=1e-7)


@pytest.mark.parametrize(
    "params",
    [
        {"defocus": 300.0, "Cs": 1.2e7},
        {"defocus": 300.0, "Cs": 1.2e7, "focal_spread": 30.0},
        {"defocus": -200.0, "Cs": 1.2e7, "C12": 80.0, "phi12": 0.6, "focal_spread": 20.0, "angular_spread": 0.5},
        {"defocus": 50.0, "C12": 100.0, "phi12": -1.0, "angular_spread": 1.0},
        {"defocus": 100.0, "semiangle_cutoff": 12.0, "soft": False},  # an objective aperture
    ],
)
def test_image_matches_abtem_ctf(exit_wave, params):
    reference = (
        abtem.Waves(exit_wave, energy=ENERGY_EV, sampling=SAMPLING_A)
        .apply_ctf(abtem.CTF(energy=ENERGY_EV, **params))
        .intensity()
        .interpolate(gpts=128)
        .compute()
        .array
    )
    aberrations = optics.Aberrations(
        C10_A=-params["defocus"],
        C12_A=params.get("C12", 0.0),
        phi12_rad=params.get("phi12", 0.0),
        C30_A=params.get("Cs", 0.0),
        aperture_mrad=params.get("semiangle_cutoff", 0.0),
    )
    microscope = Microscope(
        energy_eV=ENERGY_EV,
        Cs_A=params.get("Cs", 0.0),
        focal_spread_A=params.get("focal_spread", 0.0),
        angular_spread_mrad=params.get("angular_spread", 0.0),
    )
    image = optics.image_from_waves(sfft.fft2(exit_wave), SAMPLING_A, aberrations, microscope, 0.2, 128)
    assert image.dtype == np.float32 and image.shape == (128, 128)
    assert reference.std() > 0.01
    assert np.abs(image - reference).max() < 2e-3
    assert np.corrcoef(image.ravel(), reference.ravel())[0, 1] > 0.9999


def test_ctf_kernel_defocus_sign_matches_abtem():
    grid = optics.k_grid((64, 64), 0.2)
    mine = optics.ctf(grid, optics.Aberrations(C10_A=-150.0), ENERGY_EV)
    theirs = abtem.CTF(energy=ENERGY_EV, defocus=150.0, gpts=64, sampling=0.2)._evaluate_kernel()
    assert np.abs(mine - theirs).max() < 1e-4
    # underfocus (positive defocus) gives exp(+i pi lambda k^2 defocus)
    k2 = grid.k2[1, 0]
    assert np.angle(mine[1, 0]) == pytest.approx(np.pi * optics.wavelength_A(ENERGY_EV) * k2 * 150.0, abs=1e-5)


def test_scherzer_defocus_and_dark_atoms():
    defocus = optics.scherzer_defocus_A(1.2e7, ENERGY_EV)
    assert defocus == pytest.approx(595.0, abs=1.0)
    assert defocus == pytest.approx(abtem.transfer.scherzer_defocus(1.2e7, ENERGY_EV), rel=1e-6)
    # a weak positive phase bump (an atom) is dark at Scherzer underfocus, bright at the same overfocus
    x = (np.arange(128) - 64) * 0.2
    bump = 0.1 * np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 0.6**2))
    waves = sfft.fft2(np.exp(1j * bump).astype(np.complex64))
    microscope = Microscope(energy_eV=ENERGY_EV, Cs_A=1.2e7, focal_spread_A=0.0, angular_spread_mrad=0.0)
    under = optics.image_from_waves(
        waves, 0.2, optics.Aberrations.from_microscope(microscope, defocus), microscope, 0.4, 64
    )
    over = optics.image_from_waves(
        waves, 0.2, optics.Aberrations.from_microscope(microscope, -defocus), microscope, 0.4, 64
    )
    assert under[32, 32] < 0.95 and over[32, 32] > 1.0


def _first_zero_radius(power, angle_rad, k_step, window=(0.2, 0.38)):
    """Radius [1/A] of the minimum of ``power`` (fftshifted) within ``window``, averaged over a
    +-4 degree wedge at ``angle_rad``, refined by a parabola."""
    n = power.shape[0]
    radii = np.arange(int(window[0] / k_step), int(window[1] / k_step) + 1)
    wedge = angle_rad + np.deg2rad(np.linspace(-4, 4, 9))[:, None]
    rows = np.rint(n // 2 + radii * np.cos(wedge)).astype(int)
    cols = np.rint(n // 2 + radii * np.sin(wedge)).astype(int)
    profile = power[rows, cols].mean(axis=0)
    i = int(np.clip(np.argmin(profile), 1, len(profile) - 2))
    left, centre, right = profile[i - 1 : i + 2]
    shift = 0.5 * (left - right) / (left - 2 * centre + right)
    return (radii[i] + shift) * k_step


def test_astigmatism_elongates_thon_rings_along_phi12():
    n, sampling = 512, 0.2
    rng = np.random.default_rng(0)
    flat_spectrum = np.exp(2j * np.pi * rng.random((n, n)))
    phase = 0.02 * sfft.ifft2(flat_spectrum).real * n  # weak phase object with a flat power spectrum
    waves = sfft.fft2(np.exp(1j * phase).astype(np.complex64))
    phi12 = np.deg2rad(30.0)
    aberrations = optics.Aberrations(C10_A=-500.0, C12_A=100.0, phi12_rad=phi12)
    image = optics.image_from_waves(
        waves,
        sampling,
        aberrations,
        Microscope(energy_eV=ENERGY_EV, Cs_A=0.0, focal_spread_A=0.0, angular_spread_mrad=0.0),
        0.4,
        256,
    )
    power = np.fft.fftshift(np.abs(sfft.fft2(image - image.mean())) ** 2)
    angles = np.deg2rad(np.arange(0, 180, 5))
    radii = np.array([_first_zero_radius(power, a, 1 / (n * sampling)) for a in angles])
    # first Thon ring: 1 / k0^2 = lambda (defocus - C12 cos 2(phi - phi12)); fit it as an ellipse
    design = np.stack([np.ones_like(angles), np.cos(2 * angles), np.sin(2 * angles)], axis=1)
    (mean, b, c), *_ = np.linalg.lstsq(design, 1 / radii**2, rcond=None)
    longest_axis_deg = np.rad2deg(0.5 * np.arctan2(-c, -b)) % 180
    wavelength = optics.wavelength_A(ENERGY_EV)
    assert longest_axis_deg == pytest.approx(30.0, abs=3.0)
    assert np.hypot(b, c) / wavelength == pytest.approx(100.0, rel=0.1)
    assert mean / wavelength == pytest.approx(500.0, rel=0.05)


def test_vacuum_images_to_one():
    waves = sfft.fft2(np.ones((2, 64, 64), np.complex64))
    microscope = Microscope(energy_eV=ENERGY_EV, Cs_A=1.2e7, focal_spread_A=10.0, angular_spread_mrad=0.5)
    aberrations = optics.Aberrations.from_microscope(microscope, 100.0, C12_A=20.0)
    image = optics.image_from_waves(waves, 0.1, aberrations, microscope, 0.2, 32)
    np.testing.assert_allclose(image, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="pixel_size_A"):
        optics.image_from_waves(waves, 0.1, aberrations, microscope, 0.25, 32)


def test_fourier_downsample_matches_abtem_interpolate():
    image = np.random.default_rng(1).random((96, 96)).astype(np.float32)
    reference = abtem.Images(image, sampling=0.1).interpolate(gpts=48).array
    np.testing.assert_allclose(optics.fourier_downsample(image, 48), reference, atol=1e-5)
    assert optics.fourier_downsample(image, 48).mean() == pytest.approx(image.mean(), rel=1e-5)


def test_poisson_statistics():
    intensity = np.ones((256, 256), np.float32)
    intensity[:, 128:] = 0.5
    dose, pixel = 100.0, 0.5
    counts = optics.poisson_noise(intensity, dose, pixel, np.random.default_rng(2))
    assert counts.dtype == np.float32 and np.all(counts == np.round(counts))
    for half, level in ((counts[:, :128], 1.0), (counts[:, 128:], 0.5)):
        lam, n = level * dose * pixel**2, half.size
        assert abs(half.mean() - lam) < 3 * np.sqrt(lam / n)
        assert abs(half.var(ddof=1) - lam) < 3 * np.sqrt((lam + 2 * lam**2) / n)
    again = optics.poisson_noise(intensity, dose, pixel, np.random.default_rng(2))
    assert again.tobytes() == counts.tobytes()
    with pytest.raises(ValueError, match="dose_e_per_A2"):
        optics.poisson_noise(intensity, 0.0, pixel, np.random.default_rng(2))


def test_gaussian_blur_is_the_mtf():
    image = np.random.default_rng(3).normal(size=(64, 64)).astype(np.float32)
    sigma = 1.5
    blurred = optics.gaussian_blur(image, sigma)
    k2 = np.fft.fftfreq(64)[:, None] ** 2 + np.fft.fftfreq(64)[None, :] ** 2
    ratio = np.abs(sfft.fft2(blurred)) ** 2 / np.abs(sfft.fft2(image)) ** 2
    expected = np.exp(-2 * np.pi**2 * sigma**2 * k2) ** 2
    keep = expected > 1e-4
    np.testing.assert_allclose(ratio[keep], expected[keep], rtol=1e-3)
    assert blurred.mean() == pytest.approx(image.mean(), abs=1e-5)
    corner = np.zeros((32, 32), np.float32)
    corner[0, 0] = 1.0
    wrapped = optics.gaussian_blur(corner, 1.0)
    assert wrapped[-1, -1] == pytest.approx(wrapped[1, 1], rel=1e-4)


def test_wave_first_downsampling_matches_abtem(exit_wave):
    """The seed study's order (``downsample="wave"``): abTEM's Waves.downsample, then the CTF and
    the intensity on the 0.2 A grid."""
    ctf = abtem.CTF(energy=ENERGY_EV, defocus=100.0, focal_spread=10.0)
    reference = (
        abtem.Waves(exit_wave, energy=ENERGY_EV, sampling=SAMPLING_A)
        .downsample(gpts=(128, 128))
        .apply_ctf(ctf)
        .intensity()
        .compute()
        .array
    )
    microscope = Microscope(energy_eV=ENERGY_EV, Cs_A=0.0, focal_spread_A=10.0, angular_spread_mrad=0.0)
    aberrations = optics.Aberrations(C10_A=-100.0)
    waves = sfft.fft2(exit_wave)
    wave_first = optics.image_from_waves(waves, SAMPLING_A, aberrations, microscope, 0.2, 128, "wave")
    np.testing.assert_allclose(wave_first, reference, atol=1e-4)
    # the two orders differ only by what folds back above the 0.2 A Nyquist frequency
    intensity_first = optics.image_from_waves(waves, SAMPLING_A, aberrations, microscope, 0.2, 128)
    assert 0.01 * reference.std() < np.abs(wave_first - intensity_first).max() < 0.1 * reference.std()
    with pytest.raises(ValueError, match="downsample"):
        optics.image_from_waves(waves, SAMPLING_A, aberrations, microscope, 0.2, 128, "image")
