"""Zero-defocus calibration: the minimum-contrast plane of a known phase object, fast and full search."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.fft as sfft

from emsim.simulation import calibration, optics
from emsim.study.settings import Microscope

MICROSCOPE = Microscope(energy_eV=300e3, Cs_A=0.0, focal_spread_A=0.0, angular_spread_mrad=0.0)


def _phase_object_at(defocus_A: float, n: int = 128, sampling: float = 0.2) -> np.ndarray:
    """Gaussian phase bumps (0.8 rad) propagated by ``defocus_A``: minimum contrast is back at it."""
    x = np.arange(n) * sampling
    rng = np.random.default_rng(4)
    phase = np.zeros((n, n))
    for cx, cy in rng.uniform(0, n * sampling, (6, 2)):
        d2 = ((x[:, None] - cx + 12.8) % 25.6 - 12.8) ** 2 + ((x[None, :] - cy + 12.8) % 25.6 - 12.8) ** 2
        phase += 0.8 * np.exp(-d2 / (2 * 1.5**2))
    grid = optics.k_grid((n, n), sampling)
    return sfft.ifft2(sfft.fft2(np.exp(1j * phase)) * optics.ctf(grid, optics.Aberrations(C10_A=defocus_A), 300e3))


@pytest.mark.parametrize("depth_A", [None, 60.0])
def test_finds_the_plane_of_a_pure_phase_object(depth_A):
    wave = _phase_object_at(37.3)
    found = calibration.zero_defocus_A(wave, 0.2, MICROSCOPE, depth_A=depth_A)
    assert found == pytest.approx(37.3, abs=0.051)


def test_a_bracket_that_misses_the_minimum_falls_back_to_the_full_search():
    wave = _phase_object_at(-60.0)  # 60 A beyond the bracket [-10, depth + 10]
    assert calibration.zero_defocus_A(wave, 0.2, MICROSCOPE, depth_A=20.0) == pytest.approx(-60.0, abs=0.051)


def test_focal_spread_envelope_crops_the_grid_without_moving_the_minimum():
    wave = _phase_object_at(25.0, n=256, sampling=0.1)
    with_spread = replace(MICROSCOPE, focal_spread_A=10.0)
    spectrum, sampling = calibration._lens_limited_spectrum(wave, 0.1, with_spread)
    assert spectrum.shape[0] < 256 and sampling > 0.1
    assert calibration.zero_defocus_A(wave, 0.1, with_spread, depth_A=40.0) == pytest.approx(25.0, abs=0.2)


def test_minimum_on_the_search_edge_is_an_error():
    wave = _phase_object_at(37.3)
    with pytest.raises(calibration.CalibrationError, match="edge of the search range"):
        calibration.zero_defocus_A(wave, 0.2, MICROSCOPE, search_A=(-20.0, 30.0))
    with pytest.raises(ValueError, match="search_A"):
        calibration.zero_defocus_A(wave, 0.2, MICROSCOPE, search_A=(10, -10))
