"""Domain-shift registry and the physics of the shipped shifts (astigmatism, detector blur)."""

import numpy as np
import pytest

from emsim.simulation import domains, optics, shifts
from emsim.simulation.simulate import ShardWaves
from emsim.study.settings import Image, Microscope

MICROSCOPE = Microscope(energy_eV=300e3, Cs_A=0.0, focal_spread_A=0.0, angular_spread_mrad=0.0)
SAMPLING_A = 0.2
SIZE = 256


def carbon_like_waves(seed=0) -> ShardWaves:
    """A weak random phase object (amorphous-carbon-like exit wave), stored as the shards store it."""
    rng = np.random.default_rng(seed)
    phase = 0.05 * rng.standard_normal((SIZE, SIZE))
    wave = np.exp(1j * phase).astype(np.complex64)
    return ShardWaves(
        waves=np.fft.fft2(wave)[None, None].astype(np.complex64),
        labels=np.zeros((1, SIZE, SIZE), np.uint8),
        zero_defocus_A=np.full(1, np.nan, np.float32),
        sampling_A=SAMPLING_A,
    )


def render(domain: dict, seed=0) -> np.ndarray:
    image_cfg = Image(size_px=SIZE, pixel_size_A=SAMPLING_A, padding_A=0.0, downsample="intensity")
    image, _ = domains.render_image(carbon_like_waves(seed), 0, domain, MICROSCOPE, image_cfg, np.random.default_rng(1))
    return image


def power_spectrum(images: list[np.ndarray]) -> np.ndarray:
    return np.mean([np.abs(np.fft.fft2(im - im.mean())) ** 2 for im in images], axis=0)


def effective_defocus_A(power: np.ndarray, angle_deg: float, width_deg: float = 12.0) -> float:
    """Defocus whose Thon rings sin^2(chi) best match the power spectrum in a wedge around ``angle_deg``.

    Angles follow the project's convention: from array axis 0 towards axis 1.
    """
    lam = optics.wavelength_A(MICROSCOPE.energy_eV)
    k0 = np.fft.fftfreq(SIZE, SAMPLING_A)[:, None]
    k1 = np.fft.fftfreq(SIZE, SAMPLING_A)[None, :]
    k = np.hypot(k0, k1)
    dphi = (np.degrees(np.arctan2(k1, k0)) - angle_deg + 90) % 180 - 90  # both sides of the origin
    pick = (np.abs(dphi) < width_deg) & (k > 0.1) & (k < 0.8)
    candidates_A = np.arange(100.0, 1200.0, 5.0)
    scores = [np.corrcoef(power[pick], np.sin(np.pi * lam * k[pick] ** 2 * d) ** 2)[0, 1] for d in candidates_A]
    return float(candidates_A[int(np.argmax(scores))])


@pytest.mark.parametrize("angle_deg", [30.0, 120.0])
def test_astigmatism_makes_thon_rings_elliptical_along_the_set_angle(angle_deg):
    defocus_nm, astig_nm = 50.0, 20.0
    domain = {"defocus": {"mean_nm": defocus_nm}, "astigmatism": {"magnitude_nm": astig_nm, "angle_deg": angle_deg}}
    power = power_spectrum([render(domain, seed) for seed in range(4)])
    # chi = pi*lambda*k^2*(C10 + C12*cos 2(phi - phi12)) with C10 = -defocus: rings of a 300 A
    # defocus along the set angle, of 700 A across it (an ellipse elongated along the angle)
    assert effective_defocus_A(power, angle_deg) == pytest.approx(10 * (defocus_nm - astig_nm), rel=0.05)
    assert effective_defocus_A(power, angle_deg + 90) == pytest.approx(10 * (defocus_nm + astig_nm), rel=0.05)


def test_without_astigmatism_thon_rings_are_round():
    power = power_spectrum([render({"defocus": {"mean_nm": 50.0}}, seed) for seed in range(4)])
    for angle_deg in (0, 45, 90, 135):
        assert effective_defocus_A(power, angle_deg) == pytest.approx(500, rel=0.03)


def test_detector_blur_lowers_high_frequency_power_as_its_mtf():
    sigma_px = 1.5
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal((SIZE, SIZE)).astype(np.float32) for _ in range(8)]
    blurred = [shifts.SHIFTS["detector_blur"].apply(im, {"sigma_px": sigma_px}, rng, {})[0] for im in noise]
    ratio = power_spectrum(blurred) / power_spectrum(noise)
    k = np.hypot(np.fft.fftfreq(SIZE)[:, None], np.fft.fftfreq(SIZE)[None, :])  # cycles per pixel
    mtf = np.exp(-2 * np.pi**2 * sigma_px**2 * k**2)
    band = (k > 0.02) & (k < 0.3)
    np.testing.assert_allclose(ratio[band], mtf[band] ** 2, rtol=1e-3, atol=1e-6)


def test_dose_gives_poisson_counts_with_the_dose_per_pixel():
    image = np.ones((64, 64), np.float32)
    counts, meta = shifts.SHIFTS["dose"].apply(
        image, {"e_per_A2": 100.0}, np.random.default_rng(0), {"pixel_size_A": 0.5}
    )
    assert meta == {"dose_e_per_A2": 100.0}
    assert counts.mean() == pytest.approx(25.0, rel=0.02) and counts.var() == pytest.approx(25.0, rel=0.1)


def test_defocus_is_drawn_per_image_and_recorded():
    rng = np.random.default_rng(0)
    draws = [shifts.defocus({}, {"mean_nm": -10, "sigma_nm": 1.5}, rng, {}) for _ in range(400)]
    defocus_A = np.array([meta["defocus_A"] for _, meta in draws])
    assert defocus_A.mean() == pytest.approx(-100, abs=2) and defocus_A.std() == pytest.approx(15, rel=0.1)
    assert all(ab["C10_A"] == -meta["defocus_A"] for ab, meta in draws)  # positive defocus = underfocus


def test_detector_shifts_run_in_order_around_the_dose():
    domain = {
        "structure_set": "x",
        "detector_blur": {"sigma_px": 1},
        "dose": {"e_per_A2": 10},
        "defocus": {"mean_nm": 0},
    }
    assert [k.name for k, _ in shifts.ordered(domain, "detector")] == ["dose", "detector_blur"]
    assert [k.name for k, _ in shifts.ordered(domain, "optics")] == ["defocus"]


def test_register_rejects_a_taken_name_and_an_unknown_stage():
    with pytest.raises(ValueError, match="already defined"):
        shifts.register("dose", "detector", {})(lambda *a: a)
    with pytest.raises(ValueError, match="stage"):
        shifts.register("warp", "sample", {})


def test_image_downsample_switch_reaches_the_rendered_image():
    """``image.downsample``: the domain's images follow the configured order (optics tests check both)."""
    waves, domain = carbon_like_waves(0), {"defocus": {"mean_nm": 20.0}}
    images = {}
    for order in ("intensity", "wave"):
        image_cfg = Image(size_px=SIZE // 2, pixel_size_A=2 * SAMPLING_A, padding_A=0.0, downsample=order)
        images[order], _ = domains.render_image(waves, 0, domain, MICROSCOPE, image_cfg, np.random.default_rng(1))
        aberrations = optics.Aberrations(C10_A=-200.0, C30_A=MICROSCOPE.Cs_A)
        direct = optics.image_from_waves(
            waves.waves[0], SAMPLING_A, aberrations, MICROSCOPE, 2 * SAMPLING_A, SIZE // 2, order
        )
        np.testing.assert_allclose(images[order], direct, atol=1e-5)
    assert not np.allclose(images["intensity"], images["wave"], atol=1e-4)
