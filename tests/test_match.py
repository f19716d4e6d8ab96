"""`emsim match`: defocus, dose and pixel size read off images whose conditions are known."""

from pathlib import Path

import abtem
import figure_content
import numpy as np
import pytest
import yaml

from emsim import data, match
from emsim.cli import main
from emsim.simulation import optics
from emsim.study import config

PIXEL_A = 0.2
ROOT = Path(__file__).resolve().parents[1]


def amorphous(df_nm: float, dose: float | None, n: int = 512, Cs_A: float = 0.0, seed: int = 0) -> np.ndarray:
    """A thin amorphous film (white weak phase) imaged by emsim's optics at ``df_nm``, as counts."""
    rng = np.random.default_rng(seed)
    wave = np.fft.fft2(np.exp(1j * rng.normal(0, 0.15, (n, n))))
    transfer = optics.ctf(optics.k_grid((n, n), PIXEL_A), optics.Aberrations(C10_A=-10 * df_nm, C30_A=Cs_A), 300e3, 10)
    intensity = np.abs(np.fft.ifft2(wave * transfer)) ** 2
    return intensity if dose is None else optics.poisson_noise(intensity, dose, PIXEL_A, rng)


@pytest.mark.parametrize(("df_nm", "dose"), [(-20.0, 300.0), (12.0, 600.0), (25.0, 100.0)])
def test_round_trip_on_emsim_images(df_nm, dose):
    image = amorphous(df_nm, dose)
    fit = match.fit_defocus(image, PIXEL_A)
    assert fit.magnitude_nm == pytest.approx(abs(df_nm), abs=max(1.0, 0.1 * abs(df_nm)))
    assert fit.sign == 0 and "sign unknown" in fit.describe()  # Cs = 0: +df and -df ring alike
    assert match.dose_from_counts(image, PIXEL_A, 1.0) == pytest.approx(dose, rel=0.15)
    assert match.dose_from_noise(image, PIXEL_A) == pytest.approx(dose, rel=0.15)


def test_round_trip_on_plain_abtem_images():
    """abTEM's own CTF (not emsim's optics): a shared mistake cannot cancel out."""
    rng = np.random.default_rng(1)
    waves = abtem.Waves(
        np.exp(1j * rng.normal(0, 0.15, (512, 512))).astype(np.complex64), sampling=PIXEL_A, energy=300e3
    )
    image = waves.apply_transform(abtem.CTF(defocus=180.0, focal_spread=10.0)).intensity().compute().array
    assert match.fit_defocus(image, PIXEL_A).magnitude_nm == pytest.approx(18.0, abs=1.0)


def test_near_focus_is_a_bound_not_a_number():
    fit = match.fit_defocus(amorphous(0.2, 600.0), PIXEL_A)
    assert fit.magnitude_nm is None and f"below {fit.below_nm:.1f} nm" in fit.describe()
    flat = np.random.default_rng(0).poisson(100.0, (256, 256)).astype(float)  # no rings at all
    assert match.fit_defocus(flat, PIXEL_A).magnitude_nm is None


def test_sign_from_the_Cs_term():
    for df_nm in (60.0, -60.0):
        fit = match.fit_defocus(amorphous(df_nm, None, Cs_A=1.2e7), PIXEL_A, Cs_A=1.2e7)
        assert fit.sign == np.sign(df_nm) and fit.magnitude_nm == pytest.approx(60.0, abs=6.0)


def test_pixel_size_from_a_lattice_spacing():
    x = np.arange(512)
    fringes = 1 + 0.3 * np.cos(2 * np.pi * x / 8.4)[:, None] * np.ones(512)  # 3.35 A fringes at 0.4 A/px
    image = np.random.default_rng(0).poisson(200 * (fringes + amorphous(10.0, None))).astype(float)
    assert match.pixel_size_from_spacing(image, 3.35) == pytest.approx(0.4, rel=0.02)
    with pytest.raises(ValueError, match="no peak for a 3.35 A spacing"):
        match.pixel_size_from_spacing(np.random.default_rng(0).poisson(200.0, (512, 512)).astype(float), 3.35)


def test_cli_writes_a_domain_that_loads(tmp_path, capsys):
    for i, df_nm in enumerate((10.0, 14.0)):
        np.save(tmp_path / f"m{i}.npy", amorphous(df_nm, 400.0, seed=i))
    stack = np.stack([amorphous(10.0, 400.0)] * 2)
    np.save(tmp_path / "stack.npy", stack)
    files = [str(tmp_path / f) for f in ("m0.npy", "stack.npy", "m1.npy")]
    code = main(
        [
            "match",
            *files,
            "--pixel-size",
            "0.2",
            "--counts-per-electron",
            "1",
            "-o",
            str(tmp_path / "d.yaml"),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1 and "stack.npy: a stack of 2 images" in err and len(err.strip().splitlines()) == 1
    domain = yaml.safe_load((tmp_path / "d.yaml").read_text())["domains"]["matched"]
    assert domain["defocus"]["mean_nm"] == pytest.approx(12.0, abs=1.0) and domain["dose"]["e_per_A2"] == pytest.approx(
        400, rel=0.15
    )
    assert figure_content.read(tmp_path / "plots" / "m0_rings.png").ink > 0.05
    study = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    study["domains"]["matched"] = domain | {"structure_set": "au"}  # the one key the user fills in
    study["image"]["padding_A"] = 8.0  # room for the lens at 14 nm
    assert "matched" in config.load(study, base_dir=ROOT / "config").domains


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--counts-per-electron", "0"], "--counts-per-electron: 0 is not a finite number > 0"),
        ([], "records no pixel size"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, flags, message):
    np.save(tmp_path / "m.npy", amorphous(10.0, 400.0))
    code = main(["match", str(tmp_path / "m.npy"), *flags])
    assert code != 0 and message in capsys.readouterr().err


def test_cli_names_the_nearest_simulated_domains(tmp_path, capsys):
    """By defocus from the study file; by spectrum from the domains' datasets (resampled files)."""
    np.save(tmp_path / "m.npy", amorphous(10.0, 400.0))
    coarse = amorphous(10.0, None, n=1024)[::2, ::2] + amorphous(10.0, None, n=1024)[1::2, 1::2]  # 0.4 A pixels
    like = np.random.default_rng(0).poisson(400 * 0.16 * coarse[None, :64, :64].repeat(3, 0)).astype(np.float32)
    flat = np.random.default_rng(1).poisson(200.0, like.shape).astype(np.float32)
    for name, images in (("df10", like), ("df-10", flat)):
        data.write_dataset(
            tmp_path / "results" / "datasets" / f"{name}.h5",
            images,
            np.zeros(images.shape, np.uint8),
            {"seed": np.zeros(3)},
            {"train": [0], "val": [1, 2], "test": []},
            {"domain": name},
        )
    study = ROOT / "config/test.yaml"
    args = ["match", str(tmp_path / "m.npy"), "--pixel-size", "0.2", "--study", str(study)]
    assert main([*args, "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "nearest by defocus: df-10 (|mean_nm| 10 against the files' 10.0 nm" in out
    assert "nearest by spectrum (OOD score, about 1 = alike): df10 (df10 " in out
    assert (
        main([*args, "--results", str(tmp_path / "none")]) == 0 and "no spectrum comparison" in capsys.readouterr().out
    )
