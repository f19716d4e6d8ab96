"""abTEM multislice exit waves of scenes (full scene and particles in vacuum), cached per shard.

A shard job simulates many structures in one process: abTEM's FFTW plans are made once per
grid shape and reused (optionally seeded from a saved FFTW wisdom file, which also makes the
plans, hence the bytes, identical across processes).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import abtem
import h5py
import numpy as np
import pyfftw
import scipy.fft as sfft
from abtem.core import backend as abtem_backend

from emsim.io import atomic_path, reading
from emsim.simulation import calibration, optics, phonons, structures
from emsim.simulation import labels as labels_mod
from emsim.study.settings import Image, Labels, Microscope, Simulation

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu")
WAVES_CONVENTION = (
    "Fourier space: scipy.fft.fft2 of the real-space exit wave (vacuum = 1), unnormalised, "
    "unshifted (k = 0 at [0, 0]); propagated to the particles' exit plane; "
    "axes (structure, frozen-phonon configuration, x, y)"
)


def exit_waves(atoms, sim: Simulation, energy_eV: float, seed: int) -> np.ndarray:
    """Real-space exit waves (P, G, G) complex64 of ``atoms`` at beam energy ``energy_eV`` with
    P = sim.frozen_phonons configurations (FrozenPhonons, sigma per element, ``seed``); G = cell / sim.sampling_A."""
    return np.stack([_multislice(config, sim, energy_eV) for config in _phonon_configs(atoms, sim, seed)])


def vacuum_exit_wave(atoms, sim: Simulation, energy_eV: float) -> np.ndarray:
    """Real-space exit wave (G, G) complex64 of static ``atoms`` (no phonons): the particles in vacuum."""
    return _multislice(atoms, sim, energy_eV)


def scene_exit_waves(scene, sim: Simulation, energy_eV: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Full-scene exit waves (P, G, G), static particle-in-vacuum exit wave (G, G) and their
    exit-plane distance [A], real space, complex64.

    The particle-in-vacuum wave leaves at the bottom of ``scene.particle_atoms()``'s cell. When
    all substrate atoms lie below that plane (particles on the carbon), each configuration is one
    multislice in two stages, particles then substrate. Otherwise the full scene is simulated in one.
    """
    particles = scene.particle_atoms()
    vacuum_plane_A = float(particles.cell[2, 2])
    offset_A = float(scene.cell_A[2]) - vacuum_plane_A
    vacuum = vacuum_exit_wave(particles, sim, energy_eV)
    substrate_z = scene.positions_A[~scene.is_particle, 2]
    if len(particles) == 0 or len(substrate_z) == 0 or substrate_z.min() < vacuum_plane_A:
        return exit_waves(scene.atoms(), sim, energy_eV, seed), vacuum, offset_A
    full = []
    for config in _phonon_configs(scene.atoms(), sim, seed):
        top = _slab(config[scene.is_particle], 0.0, vacuum_plane_A)
        bottom = _slab(config[~scene.is_particle], vacuum_plane_A, scene.cell_A[2])
        waves = _multislice(top, sim, energy_eV, as_waves=True)
        full.append(_multislice(bottom, sim, energy_eV, incident=waves))
    return np.stack(full), vacuum, offset_A


def _phonon_configs(atoms, sim, seed):
    """sim.frozen_phonons displaced copies of ``atoms`` (abTEM FrozenPhonons, sigma per element)."""
    sigmas = phonons.sigmas_A(atoms.get_chemical_symbols(), sim.phonon_sigma_A)
    return abtem.FrozenPhonons(atoms, sim.frozen_phonons, sigmas=sigmas, seed=seed)


def _slab(atoms, z_min_A: float, z_max_A: float):
    """``atoms`` shifted to start at ``z_min_A`` in a cell ``z_max_A - z_min_A`` deep (z clipped into it)."""
    atoms = atoms.copy()
    depth_A = z_max_A - z_min_A
    atoms.positions[:, 2] = np.clip(atoms.positions[:, 2] - z_min_A, 0.0, np.nextafter(depth_A, 0))
    atoms.cell[2, 2] = depth_A
    return atoms


def _multislice(atoms, sim: Simulation, energy_eV: float, incident=None, as_waves: bool = False):
    """abTEM multislice of static ``atoms`` (a plane wave, or ``incident`` Waves, enters at z = 0):
    (G, G) complex64 numpy array, or the abTEM Waves if ``as_waves``."""
    gpts = grid_points(atoms.cell[0, 0], sim.sampling_A)
    device = check_device(sim.device)
    with abtem.config.set({"device": device, "fft": "fftw", "diagnostics.progress_bar": False}):
        potential = abtem.Potential(atoms, gpts=gpts, slice_thickness=sim.slice_thickness_A, device=device)
        if incident is None:
            plane_wave = abtem.PlaneWave(energy=energy_eV, device=device)
            waves = plane_wave.multislice(potential, lazy=False)
        else:
            waves = incident.multislice(potential)
    return waves if as_waves else _to_numpy(waves.array)


def _to_numpy(array) -> np.ndarray:
    """(G, G) complex64 numpy copy of an abTEM wave array (numpy or CuPy)."""
    if not isinstance(array, np.ndarray):
        array = abtem_backend.cp.asnumpy(array)
    return np.array(array, np.complex64).reshape(array.shape[-2:])


def grid_points(cell_A: float, sampling_A: float) -> int:
    """Grid points across a square cell; the cell must be a whole number of samples."""
    gpts = int(round(cell_A / sampling_A))
    if not np.isclose(gpts * sampling_A, cell_A, rtol=1e-6):
        raise ValueError(f"cell {cell_A} A is not a multiple of simulation.sampling_A={sampling_A}")
    return gpts


def check_device(device: str) -> str:
    """Validate simulation.device; "gpu" needs a working CuPy (abTEM would fall back to CPU silently)."""
    if device not in DEVICES:
        raise ValueError(f"simulation.device={device!r}; allowed: {', '.join(DEVICES)}")
    if device == "gpu":
        cupy = abtem_backend.cp
        if cupy is None:
            raise RuntimeError(
                "simulation.device='gpu' but CuPy is not importable; install cupy-cuda12x "
                "(or cupy-cuda11x) matching the CUDA driver, or set simulation.device: cpu"
            )
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as error:
            raise RuntimeError(f"simulation.device='gpu' but CUDA is unusable: {error}") from error
        if count == 0:
            raise RuntimeError("simulation.device='gpu' but no CUDA device is visible")
    return device


def load_fftw_wisdom(path: str | Path) -> bool:
    """Import FFTW wisdom saved by ``save_fftw_wisdom``; False if ``path`` does not exist or is
    damaged (a warning names it; FFTW then plans afresh)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            pyfftw.import_wisdom(tuple(data[key].tobytes() for key in ("double", "single", "long")))
    except Exception as error:  # damaged: plan afresh
        log.warning("ignoring damaged FFTW wisdom file %s (%s: %s); planning afresh", path, type(error).__name__, error)
        return False
    return True


def save_fftw_wisdom(path: str | Path) -> None:
    """Write this process's FFTW wisdom (plans measured so far) to ``path`` atomically (.npz)."""
    wisdom = dict(zip(("double", "single", "long"), pyfftw.export_wisdom()))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{key: np.frombuffer(value, np.uint8) for key, value in wisdom.items()})


@dataclass
class ShardWaves:
    """Cached exit waves of a shard of structures.

    waves: (n, P, G, G) complex64 full-scene exit waves in Fourier space (``WAVES_CONVENTION``),
        referenced to the particles' exit plane (see ``simulate_shard``), ready for
        ``emsim.simulation.optics.image_from_waves``;
    labels: (n, H, W) uint8 particle masks at the image pixel size;
    zero_defocus_A: (n,) float32 minimum-contrast defocus of the particles in vacuum (nan if
        not calibrated); sampling_A: real-space sampling of the waves [A].
    """

    waves: np.ndarray
    labels: np.ndarray
    zero_defocus_A: np.ndarray
    sampling_A: float

    def save(self, path: str | Path, attrs: dict) -> None:
        """Write HDF5 atomically, arrays with Fletcher-32 checksums; ``attrs`` (provenance) values that
        are not strings are stored as JSON."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            grid = self.waves.shape[-2:]
            waves = f.create_dataset("waves", data=self.waves, chunks=(1, 1, *grid), fletcher32=True)
            waves.attrs["convention"] = WAVES_CONVENTION
            f.create_dataset("labels", data=self.labels, compression="gzip", fletcher32=True)
            f.create_dataset("zero_defocus_A", data=self.zero_defocus_A, fletcher32=True)
            f.attrs["sampling_A"] = self.sampling_A
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> ShardWaves:
        """Read a file written by ``save``; a missing, truncated or damaged file raises ValueError naming it."""
        with reading(path, "exit-wave shard"), h5py.File(path, "r") as f:
            missing = [k for k in ("waves", "labels", "zero_defocus_A") if k not in f]
            if missing or "sampling_A" not in f.attrs:
                raise ValueError(f"{path}: not an emsim shard-waves file (missing {missing or 'sampling_A'})")
            return cls(
                waves=f["waves"][()],
                labels=f["labels"][()],
                zero_defocus_A=f["zero_defocus_A"][()],
                sampling_A=float(f.attrs["sampling_A"]),
            )


def simulate_shard(
    scenes: list,
    indices: list[int],
    sim: Simulation,
    energy_eV: float,
    image: Image,
    labels: Labels,
    seed: int,
    *,
    microscope: Microscope | None = None,
    wisdom_path: str | Path | None = None,
) -> ShardWaves:
    """Full-scene exit waves (Fourier space), labels and zero defocus of each scene.

    ``indices`` are the scenes' indices in their structure set: scene ``indices[j]`` uses phonon
    seed ``SeedSequence([seed, indices[j]])``, so the waves do not depend on how the set is
    sharded. The scenes' cell is the padded cell (``emsim.simulation.optics.cell_A``); labels are cut to the
    image window. The stored waves are referenced to the particles' exit plane (the bottom of
    ``scene.particle_atoms()``'s cell, where the vacuum wave leaves): they are propagated back
    from the bottom of the scene, so defocus 0 is focus just below the particles for every
    structure, whatever its substrate thickness, and ``zero_defocus_A`` applies to them as is.
    The waves depend on the beam energy ``energy_eV`` only; the calibration (``sim.calibrate_zero_defocus``)
    images through the lens of ``microscope``, required then.
    With ``wisdom_path``, FFTW wisdom is loaded before and, if the file did not exist, saved after.
    """
    check_device(sim.device)
    if sim.calibrate_zero_defocus and microscope is None:
        raise ValueError("simulation.calibrate_zero_defocus needs the microscope (its lens)")
    cell_A = optics.cell_A(image)
    cell_px = optics.cell_px(image)
    for index, scene in zip(indices, scenes):
        if not np.isclose(scene.cell_A[0], cell_A) or not np.isclose(scene.cell_A[1], cell_A):
            raise ValueError(
                f"structure {index}: cell {scene.cell_A[:2]} A != image.size_px x image.pixel_size_A "
                f"+ 2 image.padding_A = {cell_A} A"
            )
    gpts = grid_points(cell_A, sim.sampling_A)
    grid = optics.k_grid((gpts, gpts), sim.sampling_A)
    had_wisdom = wisdom_path is not None and load_fftw_wisdom(wisdom_path)
    waves, masks, zero_defocus = [], [], []
    for index, scene in zip(indices, scenes):
        start = time.perf_counter()
        phonon_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        full, vacuum, offset_A = scene_exit_waves(scene, sim, energy_eV, phonon_seed)
        back = optics.ctf(grid, optics.Aberrations(C10_A=-offset_A), energy_eV)
        waves.append(sfft.fft2(full, overwrite_x=True) * back)
        mask = labels_mod.label(vacuum, scene.particle_atoms(), sim, energy_eV, image.pixel_size_A, cell_px, labels)
        masks.append(optics.crop_window(mask, image.size_px))
        zero_defocus.append(_zero_defocus_A(vacuum, scene, sim, microscope, index))
        log.info("structure %d simulated in %.2f s", index, time.perf_counter() - start)
    if wisdom_path is not None and not had_wisdom:
        save_fftw_wisdom(wisdom_path)
    return ShardWaves(
        waves=np.stack(waves).astype(np.complex64, copy=False),
        labels=np.stack(masks),
        zero_defocus_A=np.asarray(zero_defocus, np.float32),
        sampling_A=float(sim.sampling_A),
    )


def _zero_defocus_A(vacuum, scene, sim: Simulation, microscope: Microscope | None, index: int) -> float:
    """The structure's calibrated zero defocus, nan when calibration is off."""
    if not sim.calibrate_zero_defocus:
        return np.nan
    try:
        return calibration.zero_defocus_A(
            vacuum,
            sim.sampling_A,
            microscope,
            sim.zero_defocus_search_A,
            depth_A=float(scene.particle_atoms().cell[2, 2]),
        )
    except calibration.CalibrationError as error:
        raise calibration.CalibrationError(
            f"structure {index}: {error}; widen simulation.zero_defocus_search_A"
        ) from None


def plan_fftw(sim: Simulation, energy_eV: float, image: Image, path: str | Path) -> None:
    """Measure FFTW plans for this grid on a small synthetic scene and save them as wisdom.

    Every exit-wave job loads this file first, so all jobs use the same plans and the same
    config + seed gives the same bytes in any process (FFTW_MEASURE plans differ per process).
    """
    particles = {"lattice": "Au_fcc", "radius_A": [6.0, 6.0], "count": [1, 1], "min_gap_A": 0.0}
    substrate = {"thickness_A": [10.0, 10.0]}
    scene = structures.build_scene(particles, substrate, optics.cell_A(image), np.random.default_rng(0))
    sim = replace(sim, calibrate_zero_defocus=False, phonon_sigma_A=0.0)
    labels = Labels.with_defaults()  # the synthetic scene's label is discarded: no FFTW plan depends on it
    simulate_shard([scene], [0], sim, energy_eV, image, labels, seed=0, wisdom_path=path)
