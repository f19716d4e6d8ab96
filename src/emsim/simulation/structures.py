"""Scenes: ASE nanoparticles (lattice, size, stacking faults, orientation) on a support
(amorphous carbon by default; the kinds are in :mod:`emsim.simulation.supports`).

Geometry of a scene (all lengths in Angstrom):

- the cell is ``(L, L, Lz)``, periodic in x/y only; the beam travels along +z (down the column),
  so z = 0 is the entrance surface and "lowest" means largest z;
- the particles lie on the beam-entrance side of the support: every particle's lowest atom sits
  ``CONTACT_GAP_A`` above the support's top plane, so all particle atoms share one contiguous z-range
  ``[VACUUM_MARGIN_A, support_top - CONTACT_GAP_A]`` and the particle-only cell can be cut just
  below the lowest particle atom (no vacuum propagation after the particles);
- the support slab follows, then ``VACUUM_MARGIN_A`` of vacuum.

Stacking faults exist for wurtzite lattices only; other lattices record ``n_faults = 0``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import ase
import h5py
import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers
from ase.spacegroup import crystal

from emsim.io import atomic_path, reading
from emsim.simulation import supports

logger = logging.getLogger(__name__)

VACUUM_MARGIN_A = 2.0
CONTACT_GAP_A = 2.0
PLACEMENT_TRIES = 256
PLACEMENT_RESTARTS = 20
FILE_FORMAT = "emsim.scenes/1"


@dataclass(frozen=True)
class Lattice:
    """A crystal lattice; ``builder(lattice)`` returns its conventional unit cell.

    ``u`` is the internal parameter: anion height (fraction of c) for wurtzite, oxygen x of
    Wyckoff 32e (origin choice 2) for spinel; ``None`` otherwise.
    """

    name: str
    kind: str
    a_A: float
    c_A: float | None
    symbols: tuple[str, ...]
    builder: Callable[["Lattice"], ase.Atoms]
    u: float | None = None

    def unit_cell(self) -> ase.Atoms:
        """Conventional unit cell (crystal frame; c along z for hexagonal lattices)."""
        return _unit_cell(self).copy()


@functools.lru_cache(maxsize=None)
def _unit_cell(lattice: Lattice) -> ase.Atoms:
    return lattice.builder(lattice)


def _cubic(kind: str) -> Callable[[Lattice], ase.Atoms]:
    return lambda lat: bulk(lat.symbols[0], kind, a=lat.a_A, cubic=True)


def _wurtzite(lat: Lattice) -> ase.Atoms:
    return crystal(
        list(lat.symbols),
        basis=[(1 / 3, 2 / 3, 0.0), (1 / 3, 2 / 3, lat.u)],
        spacegroup=186,
        cellpar=[lat.a_A, lat.a_A, lat.c_A, 90, 90, 120],
    )


def _spinel(lat: Lattice) -> ase.Atoms:
    """AB2O4, Fd-3m origin choice 2: A on 8a, B on 16d, O on 32e (u, u, u)."""
    a_site, b_site, oxygen = lat.symbols
    return crystal(
        [a_site, b_site, oxygen],
        basis=[(1 / 8,) * 3, (1 / 2,) * 3, (lat.u,) * 3],
        spacegroup=227,
        setting=2,
        cellpar=[lat.a_A] * 3 + [90] * 3,
    )


LATTICES: dict[str, Lattice] = {
    lat.name: lat
    for lat in [
        Lattice("CdSe_wurtzite", "wurtzite", 4.2985, 7.0152, ("Cd", "Se"), _wurtzite, u=0.375),
        Lattice("ZnS_wurtzite", "wurtzite", 3.8227, 6.2607, ("Zn", "S"), _wurtzite, u=0.375),
        Lattice("Cu_fcc", "fcc", 3.6157, None, ("Cu",), _cubic("fcc")),
        Lattice("Ag_fcc", "fcc", 4.0782, None, ("Ag",), _cubic("fcc")),
        Lattice("Au_fcc", "fcc", 4.078, None, ("Au",), _cubic("fcc")),
        Lattice("Pt_fcc", "fcc", 3.924, None, ("Pt",), _cubic("fcc")),
        Lattice("C_diamond", "diamond", 3.5673, None, ("C",), _cubic("diamond")),
        Lattice("Si_diamond", "diamond", 5.430, None, ("Si",), _cubic("diamond")),
        Lattice("Fe3O4_spinel", "spinel", 8.394, None, ("Fe", "Fe", "O"), _spinel, u=0.2549),
        Lattice("Co3O4_spinel", "spinel", 8.065, None, ("Co", "Co", "O"), _spinel, u=0.2632),
        Lattice("Fe_bcc", "bcc", 2.866, None, ("Fe",), _cubic("bcc")),
    ]
}

_CUBIC_AXES = (("[001]", (0, 0, 1)), ("[011]", (0, 1, 1)), ("[111]", (1, 1, 1)))
ZONE_AXES: dict[str, tuple[tuple[str, tuple[int, int, int]], ...]] = {
    # label (Miller or Miller-Bravais) -> direction [uvw] in the conventional cell
    "wurtzite": (("[2-1-10]", (1, 0, 0)), ("[01-10]", (1, 2, 0)), ("[0001]", (0, 0, 1))),
    "fcc": _CUBIC_AXES,
    "diamond": _CUBIC_AXES,
    "bcc": _CUBIC_AXES,
    "spinel": _CUBIC_AXES,
}
ORIENTATIONS = ("zone_axis", "random")


@dataclass(frozen=True, eq=False)
class Scene:
    """One scene: particles first, then carbon; positions inside the cell, z along the beam."""

    numbers: np.ndarray
    positions_A: np.ndarray
    is_particle: np.ndarray
    cell_A: tuple[float, float, float]
    info: dict

    def atoms(self) -> ase.Atoms:
        """Full scene, pbc (True, True, False)."""
        return ase.Atoms(
            numbers=self.numbers,
            positions=self.positions_A.astype(np.float64),
            cell=self.cell_A,
            pbc=(True, True, False),
        )

    def particle_atoms(self) -> ase.Atoms:
        """Particles only, same x/y cell and z origin, cell cut ``VACUUM_MARGIN_A`` below the lowest particle atom."""
        positions = self.positions_A[self.is_particle].astype(np.float64)
        bottom_A = positions[:, 2].max() if len(positions) else 0.0
        cell = (self.cell_A[0], self.cell_A[1], float(bottom_A) + VACUUM_MARGIN_A)
        return ase.Atoms(
            numbers=self.numbers[self.is_particle], positions=positions, cell=cell, pbc=(True, True, False)
        )


# ---------------------------------------------------------------- schema

_RANGE = {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2, "maxItems": 2}
_INT_RANGE = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}
PARTICLES_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["lattice", "radius_A"],
    "properties": {
        "lattice": {"enum": sorted(LATTICES)},
        "radius_A": _RANGE,
        "count": _INT_RANGE | {"default": [1, 1]},
        "min_gap_A": {"type": "number", "minimum": 0, "default": 10.0},
        "stacking_faults": _INT_RANGE | {"default": [0, 0]},
        "orientation": {"enum": list(ORIENTATIONS), "default": "zone_axis"},
        "mistilt_deg": {"type": "number", "minimum": 0, "maximum": 90, "default": 2.0},
    },
}
SUBSTRATE_SCHEMA = {
    "type": "object",
    "properties": {"kind": {"enum": list(supports.SUPPORTS)}},
    "default": {},
    "description": "the support under the particles; its keys depend on kind (emsim.simulation.supports)",
}
STRUCTURE_SET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["n_structures", "particles"],
    "properties": {
        "n_structures": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": 0, "default": 0},
        "particles": PARTICLES_SCHEMA,
        "substrate": SUBSTRATE_SCHEMA,
    },
}
"""JSON schema of a structure set (validated by emsim.study.config, the substrate block by its kind's
schema, :func:`emsim.simulation.supports.Support.schema`): the only home of its defaults."""


def with_defaults(block: dict | None, schema: dict) -> dict:
    """A copy of ``block`` with the defaults of ``schema``'s properties filled in (for partial blocks)."""
    defaults = {key: copy.deepcopy(sub["default"]) for key, sub in schema["properties"].items() if "default" in sub}
    return defaults | (block or {})


# ---------------------------------------------------------------- particles


def _wurtzite_sphere(lat: Lattice, radius_A: float, n_faults: int, rng: np.random.Generator) -> tuple:
    """Wurtzite stacked layer by layer along c with ``n_faults`` intrinsic faults, carved to a sphere.

    Layer k holds a cation at height k c/2 and an anion u c above it, on in-plane site
    ``sites[k]`` of {A, B, C}; perfect wurtzite repeats sites[k] = sites[k-2] (ABAB, as space group
    186); a fault layer takes the third site (ABAB|CBCB), then the ABAB rule resumes. Faults are
    drawn among the layers within radius/2 of the centre, so they cross the particle.
    """
    a, c, u = lat.a_A, lat.c_A, lat.u
    a1, a2 = np.array([a, 0.0, 0.0]), np.array([-a / 2, a * np.sqrt(3) / 2, 0.0])
    frac = rng.random(3)
    centre = frac[0] * a1 + frac[1] * a2 + np.array([0.0, 0.0, frac[2] * c])
    half_c = c / 2
    layers = np.arange(np.floor((centre[2] - radius_A - u * c) / half_c), np.ceil((centre[2] + radius_A) / half_c) + 1)
    z_layer = layers * half_c
    candidates = np.flatnonzero((np.abs(z_layer - centre[2]) <= radius_A / 2) & (np.arange(len(layers)) >= 2))
    if n_faults > len(candidates):
        raise ValueError(
            f"particles.stacking_faults: {n_faults} faults do not fit in a {radius_A:.1f} A particle "
            f"(at most {len(candidates)}); lower particles.stacking_faults or raise particles.radius_A"
        )
    faults = set(rng.choice(candidates, size=n_faults, replace=False).tolist())
    sites = [1, 2]
    for k in range(2, len(layers)):
        sites.append(3 - sites[-1] - sites[-2] if k in faults else sites[-2])
    site_xy = np.array([[0.0, 0.0], [1 / 3, 2 / 3], [2 / 3, 1 / 3]]) @ np.array([a1[:2], a2[:2]])
    n_xy = int(np.ceil(radius_A / (a * np.sqrt(3) / 2))) + 2
    i, j = np.meshgrid(np.arange(-n_xy, n_xy + 2), np.arange(-n_xy, n_xy + 2), indexing="ij")
    grid = np.outer(i.ravel(), a1) + np.outer(j.ravel(), a2)
    layer_offsets = np.column_stack([site_xy[sites], z_layer])
    basis = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, u * c]])
    positions = (grid[:, None, None, :] + layer_offsets[None, :, None, :] + basis[None, None, :, :]).reshape(-1, 3)
    numbers = np.tile([atomic_numbers[s] for s in lat.symbols], len(grid) * len(layers))
    fault_z_A = sorted(float(z_layer[k] - centre[2]) for k in faults)
    return numbers, positions - centre, fault_z_A


def _tiled_sphere(lat: Lattice, radius_A: float, rng: np.random.Generator) -> tuple:
    """Unit cell tiled around a random centre (uniform in one cell)."""
    unit = lat.unit_cell()
    cell = unit.cell.array
    centre_frac = rng.random(3)
    extent = radius_A * np.linalg.norm(np.linalg.inv(cell), axis=0)
    axes = [np.arange(np.floor(f - e) - 1, np.ceil(f + e) + 1) for f, e in zip(centre_frac, extent)]
    shifts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    frac = shifts[:, None, :] + unit.get_scaled_positions()[None, :, :] - centre_frac
    return np.tile(unit.numbers, len(shifts)), frac.reshape(-1, 3) @ cell


def nanoparticle(lattice: Lattice, radius_A: float, n_faults: int, rng: np.random.Generator) -> ase.Atoms:
    """Sphere of ``radius_A`` carved from ``lattice`` around a random point, centred on the origin.

    Crystal frame (conventional cell axes; wurtzite c along z). ``n_faults`` applies to wurtzite
    only (ignored otherwise); ``atoms.info["fault_z_A"]`` lists the fault planes' heights.
    """
    if lattice.kind == "wurtzite":
        numbers, positions, fault_z_A = _wurtzite_sphere(lattice, radius_A, n_faults, rng)
    else:
        (numbers, positions), fault_z_A = _tiled_sphere(lattice, radius_A, rng), []
    inside = np.einsum("ij,ij->i", positions, positions) <= radius_A**2
    return ase.Atoms(numbers=numbers[inside], positions=positions[inside], info={"fault_z_A": fault_z_A})


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix about unit ``axis``."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1 - np.cos(angle_rad)) * k @ k


def _align_to_z(direction: np.ndarray) -> np.ndarray:
    """A rotation taking unit ``direction`` onto +z."""
    axis = np.cross(direction, [0.0, 0.0, 1.0])
    norm = np.linalg.norm(axis)
    if norm < 1e-12:
        return np.eye(3) if direction[2] > 0 else np.diag([1.0, -1.0, -1.0])
    return _rotation(axis / norm, np.arctan2(norm, direction[2]))


def zone_axis_direction(lattice: Lattice, uvw) -> np.ndarray:
    """Unit Cartesian vector (crystal frame) of direction [uvw] of the conventional cell."""
    direction = np.asarray(uvw, dtype=float) @ lattice.unit_cell().cell.array
    return direction / np.linalg.norm(direction)


def orientation(lattice: Lattice, mode: str, mistilt_deg: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Rotation matrix R (lab = R @ crystal) and its description.

    ``zone_axis``: a zone axis of the lattice drawn from ``ZONE_AXES`` is turned onto +z, then
    rotated in-plane uniformly and tilted by an angle uniform in [0, mistilt_deg] about a random
    in-plane axis. ``random``: uniform random rotation (no zone axis).
    """
    if mode == "random":
        return supports.random_rotation(rng), {
            "zone_axis": None,
            "inplane_deg": None,
            "mistilt_deg": None,
            "tilt_azimuth_deg": None,
        }
    axes = ZONE_AXES[lattice.kind]
    label, uvw = axes[rng.integers(len(axes))]
    inplane_deg, tilt_deg, azimuth_deg = rng.uniform(0, 360), rng.uniform(0, mistilt_deg), rng.uniform(0, 360)
    azimuth = np.deg2rad(azimuth_deg)
    matrix = (
        _rotation(np.array([np.cos(azimuth), np.sin(azimuth), 0.0]), np.deg2rad(tilt_deg))
        @ _rotation(np.array([0.0, 0.0, 1.0]), np.deg2rad(inplane_deg))
        @ _align_to_z(zone_axis_direction(lattice, uvw))
    )
    return matrix, {
        "zone_axis": label,
        "inplane_deg": float(inplane_deg),
        "mistilt_deg": float(tilt_deg),
        "tilt_azimuth_deg": float(azimuth_deg),
    }


def check_stacking_faults(particles: dict) -> None:
    """Raise ValueError if the most stacking faults may not fit the smallest wurtzite particle:
    faults go on the layers (c/2 apart) within radius/2 of its centre, at least floor(2 r / c)."""
    lattice = LATTICES[particles["lattice"]]
    if lattice.kind != "wurtzite":
        return
    radius_A, n_faults = particles["radius_A"][0], particles["stacking_faults"][1]
    room = int(np.floor(2 * radius_A / lattice.c_A))
    if n_faults > room:
        raise ValueError(
            f"particles.stacking_faults: up to {n_faults} faults may not fit a {radius_A:g} A particle "
            f"(room for {room}); lower particles.stacking_faults or raise the smallest particles.radius_A"
        )


def check_fit(particles: dict, cell_xy_A: float) -> None:
    """Raise ValueError if the largest particle plus its gap does not fit its own periodic image."""
    if 2 * particles["radius_A"][1] + particles["min_gap_A"] > cell_xy_A:
        raise ValueError(
            f"particles.radius_A: a {particles['radius_A'][1]} A particle plus particles.min_gap_A = "
            f"{particles['min_gap_A']} does not fit its own periodic image in the {cell_xy_A:g} A cell "
            f"(image.size_px * image.pixel_size_A + 2 image.padding_A)"
        )


def check_placement(particles: dict, cell_xy_A: float, trials: int = 3) -> None:
    """Raise ValueError unless the largest particles (max count, max radius) can be placed, each
    clear of its own periodic image.

    Cheap (milliseconds), so the study config can reject an impossible structure set before any
    job runs instead of failing inside one.
    """
    check_fit(particles, cell_xy_A)
    radii_A = np.full(particles["count"][1], float(particles["radius_A"][1]))
    last_error = None
    for seed in range(trials):
        try:
            _place_discs(radii_A, cell_xy_A, particles["min_gap_A"], np.random.default_rng(seed))
            return
        except ValueError as error:
            last_error = error
    raise last_error


def _place_discs(radii_A: np.ndarray, cell_xy_A: float, min_gap_A: float, rng: np.random.Generator) -> np.ndarray:
    """x/y centres such that periodic centre distances are >= r_i + r_j + min_gap_A (rejection sampling)."""
    for _ in range(PLACEMENT_RESTARTS):
        centres = np.empty((0, 2))
        for radius in radii_A:
            candidates = rng.random((PLACEMENT_TRIES, 2)) * cell_xy_A
            delta = candidates[:, None, :] - centres[None, :, :]
            delta -= cell_xy_A * np.round(delta / cell_xy_A)
            ok = np.all(np.hypot(delta[..., 0], delta[..., 1]) >= radii_A[: len(centres)] + radius + min_gap_A, axis=1)
            if not ok.any():
                break
            centres = np.vstack([centres, candidates[np.argmax(ok)]])
        else:
            return centres
    raise ValueError(
        f"particles.count / particles.radius_A: cannot place {len(radii_A)} particles of radii "
        f"{np.round(radii_A, 1).tolist()} A with particles.min_gap_A={min_gap_A} in a {cell_xy_A} A cell "
        f"after {PLACEMENT_RESTARTS * PLACEMENT_TRIES} tries per particle; lower particles.count or "
        f"radius_A, or enlarge the cell"
    )


# ---------------------------------------------------------------- scenes


def build_scene(particles: dict, substrate: dict, cell_xy_A: float, rng: np.random.Generator) -> Scene:
    """One scene: ``particles.count`` particles placed with their gap, lying on a support of random thickness.

    The particles draw from ``rng`` first, the support after, so structure sets that differ only
    in their ``substrate`` (same seed) share their particles atom for atom.
    """
    p = with_defaults(particles, PARTICLES_SCHEMA)
    lattice = LATTICES[p["lattice"]]
    check_fit(p, cell_xy_A)
    n_particles = int(rng.integers(p["count"][0], p["count"][1] + 1))
    radii_A = rng.uniform(*p["radius_A"], size=n_particles)
    centres_xy = _place_discs(radii_A, cell_xy_A, p["min_gap_A"], rng)
    bodies, body_numbers, records = [], [], []
    for radius in radii_A:
        n_faults = int(rng.integers(p["stacking_faults"][0], p["stacking_faults"][1] + 1))
        if lattice.kind != "wurtzite":
            n_faults = 0
        body = nanoparticle(lattice, radius, n_faults, rng)
        matrix, record = orientation(lattice, p["orientation"], p["mistilt_deg"], rng)
        bodies.append(body.positions @ matrix.T)
        body_numbers.append(body.numbers)
        records.append(record | {"n_faults": n_faults, "rotation": matrix.tolist()})
    height_A = max((float(np.ptp(b[:, 2])) for b in bodies), default=0.0)
    bottom_A = VACUUM_MARGIN_A + height_A
    support_top_A = bottom_A + CONTACT_GAP_A
    support_numbers, support, facts = supports.build(substrate, cell_xy_A, rng)
    thickness_A = facts.pop("thickness_A")
    support = support + [0.0, 0.0, support_top_A]
    centres_A = [[float(x), float(y), float(bottom_A - b[:, 2].max())] for (x, y), b in zip(centres_xy, bodies)]
    positions = np.vstack([b + c for b, c in zip(bodies, centres_A)] + [support]).astype(np.float32)
    positions[:, :2] %= np.float32(cell_xy_A)
    positions[:, :2][positions[:, :2] >= cell_xy_A] = 0.0  # float32 rounding of values just below L
    numbers = np.concatenate(body_numbers + [support_numbers]).astype(np.uint8)
    per_particle = {
        key: [r[key] for r in records]
        for key in ("zone_axis", "inplane_deg", "mistilt_deg", "tilt_azimuth_deg", "rotation", "n_faults")
    }
    info = {
        "lattice": lattice.name,
        "orientation": p["orientation"],
        "n_particles": n_particles,
        "radii_A": radii_A.tolist(),
        "centres_A": centres_A,
        "zone_axes": per_particle.pop("zone_axis"),
        "rotations": per_particle.pop("rotation"),
        **per_particle,
        "substrate_thickness_A": thickness_A,
        "substrate_top_A": support_top_A,
        **facts,
    }
    n_particle_atoms = len(numbers) - len(support)
    return Scene(
        numbers=numbers,
        positions_A=positions,
        is_particle=np.arange(len(numbers)) < n_particle_atoms,
        cell_A=(float(cell_xy_A), float(cell_xy_A), support_top_A + thickness_A + VACUUM_MARGIN_A),
        info=info,
    )


def build_structure_set(spec: dict, cell_xy_A: float, indices: range) -> list[Scene]:
    """Scenes ``indices`` of a structure set; scene i draws from ``default_rng([spec["seed"], i])``
    and records ``i`` as ``info["index"]``."""
    spec = with_defaults(spec, STRUCTURE_SET_SCHEMA)
    particles = with_defaults(spec["particles"], PARTICLES_SCHEMA)
    substrate = supports.with_defaults(spec["substrate"])
    n_structures = spec.get("n_structures")
    for i in indices:
        if i < 0 or (n_structures is not None and i >= n_structures):
            raise ValueError(f"n_structures: index {i} is outside the structure set (n_structures={n_structures})")
    if LATTICES[particles["lattice"]].kind != "wurtzite" and particles["stacking_faults"][1] > 0:
        logger.warning("particles.stacking_faults applies to wurtzite only; %s gets no faults", particles["lattice"])
    seed = spec["seed"]
    scenes = []
    for i in indices:
        scene = build_scene(particles, substrate, cell_xy_A, np.random.default_rng([seed, i]))
        scene.info["index"] = i
        scenes.append(scene)
    return scenes


# ---------------------------------------------------------------- files


def save_scenes(path, scenes: list[Scene], attrs: dict) -> None:
    """HDF5: concatenated atoms + ``offsets``, ``cells_A``, per-scene ``info`` JSON; ``attrs`` as JSON strings.

    Written atomically (``emsim.io.atomic_path``), arrays with Fletcher-32 checksums.
    """
    lengths = [len(s.numbers) for s in scenes]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FILE_FORMAT
        for key, value in sorted(attrs.items()):
            f.attrs[key] = json.dumps(value, sort_keys=True)

        def put(name, data):
            checksum = len(data) > 0 and data.dtype.kind != "O"  # HDF5 filters need chunks of fixed-size items
            f.create_dataset(name, data=data, track_times=False, fletcher32=checksum)

        put("offsets", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        put("numbers", np.concatenate([s.numbers for s in scenes] or [np.empty(0, np.uint8)]).astype(np.uint8))
        put("positions_A", np.concatenate([s.positions_A for s in scenes] or [np.empty((0, 3))]).astype(np.float32))
        put("is_particle", np.concatenate([s.is_particle for s in scenes] or [np.empty(0, bool)]).astype(bool))
        put("cells_A", np.array([s.cell_A for s in scenes], dtype=np.float64).reshape(-1, 3))
        put("info", np.array([json.dumps(s.info, sort_keys=True) for s in scenes], dtype=h5py.string_dtype()))


def load_scenes(path) -> list[Scene]:
    """Scenes written by :func:`save_scenes`; ValueError naming the file if it is not one or is damaged."""
    with reading(path, "scenes file"), h5py.File(path, "r") as f:
        if f.attrs.get("format") != FILE_FORMAT:
            raise ValueError(
                f"{os.fspath(path)}: not an emsim scenes file (format {f.attrs.get('format')!r}, "
                f"expected {FILE_FORMAT!r})"
            )
        offsets = f["offsets"][:]
        numbers, positions, is_particle = f["numbers"][:], f["positions_A"][:], f["is_particle"][:]
        cells, infos = f["cells_A"][:], f["info"].asstr()[:]
    return [
        Scene(
            numbers=numbers[a:b],
            positions_A=positions[a:b],
            is_particle=is_particle[a:b],
            cell_A=tuple(float(x) for x in cell),
            info=json.loads(info),
        )
        for a, b, cell, info in zip(offsets[:-1], offsets[1:], cells, infos)
    ]
