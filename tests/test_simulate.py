"""Multislice exit waves (real abTEM) of tiny scenes, frozen phonons, shards on disk."""

from dataclasses import replace

import h5py
import numpy as np
import pytest
import scipy.fft as sfft
from abtem.core import backend as abtem_backend

from emsim.simulation import optics, simulate, structures
from emsim.study.settings import Image, Labels, Microscope, Simulation

CELL_A = 25.6
SIM = Simulation.with_defaults(
    sampling_A=0.2, frozen_phonons=2, phonon_sigma_A=0.1, shard_size=2, calibrate_zero_defocus=False
)
MICROSCOPE = Microscope(energy_eV=300e3, Cs_A=1.2e7, focal_spread_A=10.0, angular_spread_mrad=0.0)
ENERGY_EV = MICROSCOPE.energy_eV
IMAGE = Image(size_px=64, pixel_size_A=0.4, padding_A=0.0, downsample="intensity")
LABELS = Labels.with_defaults(method="phase", threshold_rad=np.pi / 16, blur_A=1.0)
PARTICLES = {"lattice": "Au_fcc", "radius_A": [6, 7], "count": [1, 1], "min_gap_A": 4}
SUBSTRATE = {"thickness_A": [8, 10], "density_g_cm3": 2.0}


@pytest.fixture(scope="module")
def scenes():
    return [structures.build_scene(PARTICLES, SUBSTRATE, CELL_A, np.random.default_rng([7, i])) for i in range(2)]


def test_exit_waves_frozen_phonons(scenes):
    atoms = scenes[0].atoms()
    waves = simulate.exit_waves(atoms, replace(SIM, frozen_phonons=3), ENERGY_EV, seed=5)
    assert waves.shape == (3, 128, 128) and waves.dtype == np.complex64
    assert np.abs(waves[0] - waves[1]).max() > 0.01  # configurations differ
    assert simulate.exit_waves(atoms, replace(SIM, frozen_phonons=3), ENERGY_EV, seed=5).tobytes() == waves.tobytes()
    assert not np.array_equal(simulate.exit_waves(atoms, replace(SIM, frozen_phonons=3), ENERGY_EV, seed=6), waves)


def test_scene_waves_share_one_multislice(scenes):
    static = replace(SIM, frozen_phonons=1, phonon_sigma_A=0.0)
    scene = scenes[0]
    full, vacuum, offset_A = simulate.scene_exit_waves(scene, static, ENERGY_EV, seed=0)
    particles = scene.particle_atoms()
    assert offset_A == pytest.approx(scene.cell_A[2] - particles.cell[2, 2])
    np.testing.assert_array_equal(vacuum, simulate.vacuum_exit_wave(particles, static, ENERGY_EV))
    direct = simulate.exit_waves(scene.atoms(), static, ENERGY_EV, seed=0)
    assert full.shape == direct.shape == (1, 128, 128)
    # two-stage and one-stage multislice differ only by where the slice boundaries fall
    assert np.corrcoef(np.abs(full[0]).ravel(), np.abs(direct[0]).ravel())[0, 1] > 0.99


def test_negative_C10_undoes_vacuum_propagation(scenes):
    """The sign ``simulate_shard`` uses to refer waves back to the particles' exit plane."""
    static = replace(SIM, frozen_phonons=1, phonon_sigma_A=0.0)
    particles = scenes[0].particle_atoms()
    deeper = particles.copy()
    deeper.cell[2, 2] += 20.0
    near = sfft.fft2(simulate.vacuum_exit_wave(particles, static, ENERGY_EV))
    far = sfft.fft2(simulate.vacuum_exit_wave(deeper, static, ENERGY_EV))
    grid = optics.k_grid(near.shape, 0.2)
    strong = np.abs(near) > 1e-2 * np.abs(near).max()
    for C10_A, expected in ((-20.0, True), (20.0, False)):
        back = far * optics.ctf(grid, optics.Aberrations(C10_A=C10_A), ENERGY_EV)
        residual = np.abs(np.angle(back[strong] / near[strong])).max()
        assert (residual < 0.02) == expected


def test_simulate_shard_round_trip_and_reproducible(scenes, tmp_path):
    sim = replace(SIM, calibrate_zero_defocus=True)
    shard = simulate.simulate_shard(scenes, [0, 1], sim, ENERGY_EV, IMAGE, LABELS, seed=11, microscope=MICROSCOPE)
    assert shard.waves.shape == (2, 2, 128, 128) and shard.waves.dtype == np.complex64
    assert shard.labels.shape == (2, 64, 64) and shard.labels.dtype == np.uint8
    assert 0 < shard.labels.mean() < 0.5
    assert shard.zero_defocus_A.dtype == np.float32 and np.all(np.isfinite(shard.zero_defocus_A))
    image = optics.image_from_waves(
        shard.waves[0],
        shard.sampling_A,
        optics.Aberrations.from_microscope(MICROSCOPE, 100.0),
        MICROSCOPE,
        IMAGE.pixel_size_A,
        IMAGE.size_px,
    )
    assert image.mean() == pytest.approx(1.0, abs=0.05)

    path = tmp_path / "shard.h5"
    shard.save(path, {"provenance": {"emsim": "test"}, "structure_set": "au"})
    assert [p.name for p in tmp_path.iterdir()] == ["shard.h5"]
    loaded = simulate.ShardWaves.load(path)
    for name in ("waves", "labels", "zero_defocus_A"):
        assert getattr(loaded, name).tobytes() == getattr(shard, name).tobytes()
    assert loaded.sampling_A == shard.sampling_A
    with h5py.File(path) as f:
        assert f.attrs["structure_set"] == "au" and '"emsim"' in f.attrs["provenance"]
        assert "Fourier" in f["waves"].attrs["convention"]

    again = simulate.simulate_shard(scenes, [0, 1], SIM, ENERGY_EV, IMAGE, LABELS, seed=11)
    assert again.waves.tobytes() == shard.waves.tobytes()
    assert np.all(np.isnan(again.zero_defocus_A))
    other = simulate.simulate_shard(scenes[:1], [0], SIM, ENERGY_EV, IMAGE, LABELS, seed=12)
    assert not np.array_equal(other.waves[0], shard.waves[0])


def test_waves_depend_on_the_structure_index_not_the_shard(scenes):
    both = simulate.simulate_shard(scenes, [4, 5], SIM, ENERGY_EV, IMAGE, LABELS, seed=11)
    alone = simulate.simulate_shard(scenes[1:], [5], SIM, ENERGY_EV, IMAGE, LABELS, seed=11)
    assert alone.waves[0].tobytes() == both.waves[1].tobytes()
    assert alone.labels[0].tobytes() == both.labels[1].tobytes()


def test_vacuum_wave_is_the_static_particles(scenes):
    scene = scenes[0]
    _, vacuum, _ = simulate.scene_exit_waves(scene, SIM, ENERGY_EV, seed=3)
    static = simulate.vacuum_exit_wave(scene.particle_atoms(), SIM, ENERGY_EV)
    np.testing.assert_array_equal(vacuum, static)


def test_padding_keeps_the_window_free_of_wrapped_detail():
    """The same particle, imaged at 20 nm defocus in cells padded by 2 A and 10 A around a 19.2 A
    window, against a 20 A padding: with the padding covering the lens's reach (about 10 A here,
    ``emsim.simulation.optics.delocalisation_A``) the window no longer changes."""
    particle = structures.nanoparticle(structures.LATTICES["Au_fcc"], 6.0, 0, np.random.default_rng(0))
    microscope = replace(MICROSCOPE, Cs_A=0.0)

    def window(padding_A: float) -> np.ndarray:
        image = Image(size_px=48, pixel_size_A=0.4, padding_A=padding_A, downsample="intensity")
        cell_A = optics.cell_A(image)
        atoms = particle.copy()
        atoms.set_cell([cell_A, cell_A, 20.0])
        atoms.center()
        waves = sfft.fft2(simulate.exit_waves(atoms, replace(SIM, frozen_phonons=1, phonon_sigma_A=0.0), ENERGY_EV, 0))
        intensity = optics.image_from_waves(
            waves, 0.2, optics.Aberrations(C10_A=-200.0), microscope, 0.4, optics.cell_px(image)
        )
        return optics.crop_window(intensity, 48)

    reference = window(20.0)
    assert optics.delocalisation_A(1 / 0.6, 200.0, 0.0, 300e3) < 10.0
    r = [np.corrcoef(window(p).ravel(), reference.ravel())[0, 1] for p in (2.0, 10.0)]
    assert r[1] > 0.999 and r[0] < r[1]


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros(3)
    with pytest.raises(ValueError, match="other.h5"):
        simulate.ShardWaves.load(path)


@pytest.mark.skipif(abtem_backend.cp is not None, reason="CuPy is installed")
def test_gpu_without_cupy_is_an_error(scenes):
    with pytest.raises(RuntimeError, match="simulation.device='gpu'"):
        simulate.exit_waves(scenes[0].atoms(), replace(SIM, device="gpu"), ENERGY_EV, seed=0)


def test_bad_configuration_is_named(scenes):
    atoms = scenes[0].atoms()
    with pytest.raises(ValueError, match="simulation.device"):
        simulate.simulate_shard(scenes, [0, 1], replace(SIM, device="tpu"), ENERGY_EV, IMAGE, LABELS, seed=0)
    with pytest.raises(ValueError, match="simulation.sampling_A"):
        simulate.exit_waves(atoms, replace(SIM, sampling_A=0.3), ENERGY_EV, seed=0)
    with pytest.raises(ValueError, match="simulation.phonon_sigma_A"):
        simulate.exit_waves(atoms, replace(SIM, phonon_sigma_A={"C": 0.1}), ENERGY_EV, seed=0)
    with pytest.raises(ValueError, match="image.size_px"):
        simulate.simulate_shard(
            scenes,
            [0, 1],
            SIM,
            ENERGY_EV,
            Image(size_px=32, pixel_size_A=0.4, padding_A=0.0, downsample="intensity"),
            LABELS,
            seed=0,
        )


def test_fftw_wisdom_round_trip(tmp_path):
    path = tmp_path / "cache" / "fftw_wisdom.npz"
    assert not simulate.load_fftw_wisdom(path)
    simulate.save_fftw_wisdom(path)
    assert simulate.load_fftw_wisdom(path)
