"""Supports: what lies under the particles, one seeded generator per kind (all lengths in Angstrom).

A support fills the slab ``z`` in ``[0, thickness)`` below the particles (z along the beam; the
scene shifts it under the particles) and is periodic in x/y with the cell. Kinds (config
``structure_sets.<set>.substrate.kind``; absent means ``amorphous``):

- ``amorphous``: hard-core random carbon (the seed study's film; unchanged bytes).
- ``holey``: the amorphous film with vacuum holes through it (discs of random radius until a given
  projected area fraction is open), as lacey/holey carbon grids.
- ``graphene``: 1-n flat graphene layers ``interlayer_A`` apart, each with its own random in-plane
  rotation and shift (turbostratic); each layer is a commensurate supercell of the cell, so it
  has no seam at the cell edge (strain, recorded, at most 2.2 % from a 40 A cell, 1.4 % from 64 A,
  0.8 % at 134 A, measured over rotations); optional holes.
- ``graphitic``: carbon-black / onion carbon: graphitic onions (nested icosahedral Goldberg
  shells, spherical or polyhedral, ``interlayer_A`` apart, outer radius drawn from
  ``onion_radius_A``, graphitic down to ``shell_thickness_A`` below the surface, hollow core), placed at random until they fill
  ``fill_fraction`` of the slab, clipped to it; a later onion is cut where it enters an earlier
  one. Edge-on facets give the (002) fringes (``interlayer_A``), face-on facets the (100) lattice.
- ``silica``: amorphous SiO2 by a two-species hard-core sampler at the given density.

Carbon-carbon distances: graphene C-C 1.42 A (a = 2.46 A); graphite (002) 3.354 A, turbostratic
carbon up to 3.44 A (Franklin, Acta Cryst. 4 (1951) 253); the onions' default 3.40 A lies between. Silica: vitreous SiO2 2.20 g/cm3, first-neighbour
Si-O 1.62 A, O-O 2.65 A, Si-Si 3.12 A (Mozzi & Warren, J. Appl. Cryst. 2 (1969) 164). A random
hard-core packing cannot reach that density with those distances as hard cores: the sampler's cores
(``SILICA_MIN_DISTANCE_A``: 1.45, 2.0, 2.4 A) are 10-23 % shorter, so the density, composition and
mean scattering of the film are silica's, its pair distances and the tetrahedral network are not (a
continuous-random-network model would be the next step).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from ase.data import atomic_masses, atomic_numbers
from ase.units import _Nav
from scipy.spatial import ConvexHull, cKDTree

CARBON_MIN_DISTANCE_A = 1.4
# Densest substrate the hard-core sampler fills (amorphous_carbon): it failed at 3.4 g/cm3 in a
# 128 x 128 x 80 A cell and at 3.5 in 60 x 60 x 40 A (the limit falls with cell size); amorphous
# carbon support films are 1.8-2.3 g/cm3.
MAX_CARBON_DENSITY_G_CM3 = 3.0
GRAPHENE_A = 2.46  # hexagon-centre lattice constant; C-C bond a / sqrt(3) = 1.42 A
# The largest hard cores with which the sampler fills vitreous silica's 2.20 g/cm3 in a 128 x 128 x 60 A
# cell (measured: 2.5 / 1.5 / 2.1 A fails at 2.4 g/cm3, 2.6 / 1.5 / 2.2 A at 2.2 g/cm3).
SILICA_MIN_DISTANCE_A = {("Si", "Si"): 2.4, ("O", "Si"): 1.45, ("O", "O"): 2.0}
MAX_SILICA_DENSITY_G_CM3 = 2.3
OVERLAP_A = 1.2  # graphitic/graphene atoms closer than this to an earlier one are dropped (seams, onion contacts)
MAX_ONIONS = 500


@dataclass(frozen=True)
class Support:
    """One support kind: its config keys (JSON schema properties with defaults) and its generator.

    ``build(params, cell_xy_A, rng)`` returns (atomic numbers, positions (N, 3) with z in
    [0, thickness), facts for the scene's info); ``check(params, cell_xy_A)`` raises ValueError
    naming the key of a value out of physical range.
    """

    name: str
    properties: dict
    build: Callable[[dict, float, np.random.Generator], tuple[np.ndarray, np.ndarray, dict]]
    check: Callable[[dict, float], None]
    elements: tuple[str, ...] = ("C",)

    def schema(self) -> dict:
        """JSON schema of a ``substrate`` block of this kind."""
        properties = {"kind": {"const": self.name}} | self.properties
        return {"type": "object", "additionalProperties": False, "properties": properties}


def kind_of(substrate: dict | None) -> Support:
    """The support kind of a ``substrate`` block (``amorphous`` when it names none)."""
    name = (substrate or {}).get("kind", "amorphous")
    if name not in SUPPORTS:
        raise ValueError(f"substrate.kind: unknown support kind {name!r}; kinds: {', '.join(SUPPORTS)}")
    return SUPPORTS[name]


def with_defaults(substrate: dict | None) -> dict:
    """A copy of ``substrate`` with its kind's defaults filled in."""
    support = kind_of(substrate)
    defaults = {key: copy.deepcopy(sub["default"]) for key, sub in support.properties.items() if "default" in sub}
    return defaults | (substrate or {})


def elements(substrate: dict | None) -> list[str]:
    """Chemical symbols a support of this block contains."""
    return sorted(kind_of(substrate).elements)


def build(substrate: dict | None, cell_xy_A: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Atomic numbers, positions (z from 0 at the slab's top) and facts of one support."""
    params = with_defaults(substrate)
    support = kind_of(params)
    numbers, positions, facts = support.build(params, cell_xy_A, rng)
    if support.name != "amorphous":  # an amorphous scene's info stays as it was before support kinds
        facts |= {"support": support.name, "n_support": len(numbers)}
    return numbers, positions, facts


def check(substrate: dict | None, cell_xy_A: float) -> None:
    """Raise ValueError (naming ``substrate.<key>``) for values the kind's generator cannot honour."""
    params = with_defaults(substrate)
    for key, value in params.items():
        if isinstance(value, list) and len(value) == 2 and value[0] > value[1]:
            raise ValueError(f"substrate.{key}: min {value[0]} is larger than max {value[1]}")
    kind_of(params).check(params, cell_xy_A)


# ---------------------------------------------------------------- hard-core samplers


def _first_greedy(pairs: np.ndarray, n: int) -> np.ndarray:
    """Indices of the greedy independent set in index order (sequential hard-core acceptance), vectorised."""
    state = np.zeros(n, np.int8)  # 0 undecided, 1 accepted, -1 rejected
    low, high = pairs[:, 0], pairs[:, 1]
    while True:
        lost = high[state[low] == 1]
        state[lost[state[lost] == 0]] = -1
        blocked = np.zeros(n, bool)
        blocked[high[state[low] >= 0]] = True
        accept = (state == 0) & ~blocked
        if not accept.any():
            return np.flatnonzero(state == 1)
        state[accept] = 1


def _n_atoms(density_g_cm3: float, mass_u: float, volume_A3: float) -> int:
    """Number of formula units of mass ``mass_u`` at a density in a volume."""
    return int(round(density_g_cm3 / mass_u * _Nav * 1e-24 * volume_A3))


def amorphous_carbon(
    cell_xy_A: float,
    thickness_A: float,
    density_g_cm3: float,
    rng: np.random.Generator,
    min_distance_A: float = CARBON_MIN_DISTANCE_A,
) -> np.ndarray:
    """Hard-core random carbon positions (N, 3) in [0, L)^2 x [0, thickness), periodic in x/y.

    N = round(density x volume / carbon mass). Random sequential addition, vectorised: uniform
    candidates are accepted in index order unless closer than ``min_distance_A`` (minimum image in
    x/y) to an earlier accepted one; a first batch of 1.6 N candidates, then top-up batches tested
    against the accepted atoms with a periodic k-d tree.
    """
    n_atoms = _n_atoms(density_g_cm3, atomic_masses[6], cell_xy_A**2 * thickness_A)
    box = np.array([cell_xy_A, cell_xy_A, thickness_A + 2 * min_distance_A])  # z padding: no wrap-around in z
    positions = np.empty((0, 3))
    for batch in range(50):
        need = n_atoms - len(positions)
        if need == 0:
            return positions
        n_candidates = int(need * (1.6 if batch == 0 else 6.0)) + 32
        candidates = rng.random((n_candidates, 3)) * (cell_xy_A, cell_xy_A, thickness_A)
        if len(positions):
            distance, _ = cKDTree(positions, boxsize=box).query(candidates, distance_upper_bound=min_distance_A)
            candidates = candidates[np.isinf(distance)]
        pairs = cKDTree(candidates, boxsize=box, balanced_tree=False).query_pairs(min_distance_A, output_type="ndarray")
        positions = np.vstack([positions, candidates[_first_greedy(pairs, len(candidates))[:need]]])
    raise ValueError(f"substrate.density_g_cm3: {density_g_cm3} g/cm3 is too dense for a {min_distance_A} A hard core")


def amorphous_silica(
    cell_xy_A: float, thickness_A: float, density_g_cm3: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hard-core random SiO2: atomic numbers and positions in [0, L)^2 x [0, thickness), periodic in x/y.

    Random sequential addition of two species (Si : O = 1 : 2, each candidate's species drawn in
    proportion to what is still missing), accepted in index order unless closer than
    ``SILICA_MIN_DISTANCE_A`` of its species pair to an earlier accepted atom.
    """
    n_units = _n_atoms(density_g_cm3, atomic_masses[14] + 2 * atomic_masses[8], cell_xy_A**2 * thickness_A)
    target = np.array([n_units, 2 * n_units])  # Si, O
    species_z = np.array([atomic_numbers["Si"], atomic_numbers["O"]])
    table = np.array([[SILICA_MIN_DISTANCE_A[tuple(sorted((a, b)))] for b in ("Si", "O")] for a in ("Si", "O")])
    reach = table.max()
    box = np.array([cell_xy_A, cell_xy_A, thickness_A + 2 * reach])
    positions, species = np.empty((0, 3)), np.empty(0, int)
    for batch in range(60):
        need = target - np.bincount(species, minlength=2)
        if not need.any():
            order = np.argsort(species, kind="stable")
            return species_z[species[order]].astype(np.uint8), positions[order]
        n_candidates = int(need.sum() * (1.6 if batch == 0 else 6.0)) + 32
        candidates = rng.random((n_candidates, 3)) * (cell_xy_A, cell_xy_A, thickness_A)
        kinds = (rng.random(n_candidates) >= need[0] / need.sum()).astype(int)
        if len(positions):
            near = cKDTree(candidates, boxsize=box).sparse_distance_matrix(
                cKDTree(positions, boxsize=box), reach, output_type="ndarray"
            )
            clash = near["v"] < table[kinds[near["i"]], species[near["j"]]]
            free = np.ones(n_candidates, bool)
            free[near["i"][clash]] = False
            candidates, kinds = candidates[free], kinds[free]
        pairs = cKDTree(candidates, boxsize=box, balanced_tree=False).query_pairs(reach, output_type="ndarray")
        if len(pairs):
            d = np.linalg.norm(_minimum_image(candidates[pairs[:, 0]] - candidates[pairs[:, 1]], cell_xy_A), axis=1)
            pairs = pairs[d < table[kinds[pairs[:, 0]], kinds[pairs[:, 1]]]]
        accepted = _first_greedy(pairs.reshape(-1, 2), len(candidates))
        keep = np.concatenate([accepted[kinds[accepted] == s][: need[s]] for s in (0, 1)])
        positions, species = np.vstack([positions, candidates[keep]]), np.concatenate([species, kinds[keep]])
    raise ValueError(
        f"substrate.density_g_cm3: {density_g_cm3} g/cm3 of silica is too dense for the hard cores "
        f"{SILICA_MIN_DISTANCE_A} A"
    )


def _minimum_image(delta: np.ndarray, cell_xy_A: float) -> np.ndarray:
    delta = delta.copy()
    delta[..., :2] -= cell_xy_A * np.round(delta[..., :2] / cell_xy_A)
    return delta


def _drop_overlaps(positions: np.ndarray, cell_xy_A: float, thickness_A: float) -> np.ndarray:
    """Indices of atoms kept when each atom closer than ``OVERLAP_A`` to an earlier kept one is dropped."""
    box = np.array([cell_xy_A, cell_xy_A, thickness_A + 2 * OVERLAP_A])
    pairs = cKDTree(positions, boxsize=box).query_pairs(OVERLAP_A, output_type="ndarray")
    return _first_greedy(pairs, len(positions))


# ---------------------------------------------------------------- holes


def _hole_mask(
    positions_xy: np.ndarray, cell_xy_A: float, radius_A: list, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, list]:
    """Atoms inside vacuum holes: discs (radius uniform in ``radius_A``, centre uniform) drawn until
    their union covers ``fraction`` of the cell (measured on a 1 A grid); returns (mask, holes)."""
    inside = np.zeros(len(positions_xy), bool)
    holes = []
    if fraction <= 0:
        return inside, holes
    n_grid = int(np.ceil(cell_xy_A))
    grid = (np.stack(np.meshgrid(np.arange(n_grid), np.arange(n_grid), indexing="ij"), -1) + 0.5) * (cell_xy_A / n_grid)
    open_grid = np.zeros((n_grid, n_grid), bool)
    while open_grid.mean() < fraction:
        centre, radius = rng.random(2) * cell_xy_A, float(rng.uniform(*radius_A))
        open_grid |= np.hypot(*_minimum_image(grid - centre, cell_xy_A).transpose(2, 0, 1)) < radius
        delta = _minimum_image(positions_xy - centre, cell_xy_A)
        inside |= np.hypot(delta[:, 0], delta[:, 1]) < radius
        holes.append({"centre_A": centre.tolist(), "radius_A": radius})
    return inside, holes


def _check_holes(params: dict, cell_xy_A: float) -> None:
    if params.get("hole_fraction", 0) > 0 and 2 * params["hole_radius_A"][1] >= cell_xy_A:
        raise ValueError(
            f"substrate.hole_radius_A: a hole of radius {params['hole_radius_A'][1]} A does not fit the "
            f"{cell_xy_A:g} A cell (diameter must be smaller than the cell)"
        )


def _with_holes(numbers, positions, params, cell_xy_A, rng, facts):
    inside, holes = _hole_mask(positions[:, :2], cell_xy_A, params["hole_radius_A"], params["hole_fraction"], rng)
    return numbers[~inside], positions[~inside], facts | {"holes": holes}


# ---------------------------------------------------------------- amorphous and silica films


def _build_amorphous(params, cell_xy_A, rng):
    thickness_A = float(rng.uniform(*params["thickness_A"]))
    carbon = amorphous_carbon(cell_xy_A, thickness_A, params["density_g_cm3"], rng)
    facts = {"thickness_A": thickness_A, "density_g_cm3": float(params["density_g_cm3"]), "n_carbon": len(carbon)}
    return np.full(len(carbon), 6, np.uint8), carbon, facts


def _build_holey(params, cell_xy_A, rng):
    numbers, positions, facts = _build_amorphous(params, cell_xy_A, rng)
    return _with_holes(numbers, positions, params, cell_xy_A, rng, facts)


def _build_silica(params, cell_xy_A, rng):
    thickness_A = float(rng.uniform(*params["thickness_A"]))
    numbers, positions = amorphous_silica(cell_xy_A, thickness_A, params["density_g_cm3"], rng)
    return numbers, positions, {"thickness_A": thickness_A, "density_g_cm3": float(params["density_g_cm3"])}


def _check_nothing(params, cell_xy_A):
    pass


# ---------------------------------------------------------------- graphene


def honeycomb(n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    """Graphene atom positions (2 per hexagon-centre lattice point n1 a1 + n2 a2), in the layer's frame."""
    a1, a2 = np.array([GRAPHENE_A, 0.0]), np.array([GRAPHENE_A / 2, GRAPHENE_A * np.sqrt(3) / 2])
    lattice = np.outer(n1.ravel(), a1) + np.outer(n2.ravel(), a2)
    return np.concatenate([lattice + (a1 + a2) / 3, lattice + 2 * (a1 + a2) / 3])


def graphene_layer(cell_xy_A: float, angle_rad: float, shift: np.ndarray) -> tuple[np.ndarray, float]:
    """One graphene layer filling the periodic L x L cell at in-plane rotation ``angle_rad``.

    The cell's edges are matched to graphene lattice vectors next to them (a commensurate
    supercell, the pair with the least strain; the rotation moves by up to a few degrees); the small affine strain that makes them exact is applied to every atom, so the
    layer is seamless across the cell edge. Returns (positions (N, 2), largest strain).
    """
    basis = np.array([[GRAPHENE_A, GRAPHENE_A / 2], [0.0, GRAPHENE_A * np.sqrt(3) / 2]])  # columns a1, a2
    c, s = np.cos(-angle_rad), np.sin(-angle_rad)
    edges = cell_xy_A * np.array([[c, -s], [s, c]])  # columns: the cell's x and y edges in the layer's frame
    nearest = np.round(np.linalg.solve(basis, edges))
    steps = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)]).T
    candidates = [
        basis @ np.column_stack([nearest[:, 0] + a, nearest[:, 1] + b]) for a in steps.T for b in steps.T
    ]  # the lattice vectors next to each cell edge: the pair with the least strain
    supercell = min(
        candidates, key=lambda c: np.abs(np.linalg.svd(cell_xy_A * np.linalg.inv(c), compute_uv=False) - 1).max()
    )
    corners = supercell @ np.array([[0, 1, 0, 1], [0, 0, 1, 1]])
    low, high = (
        np.floor(np.linalg.solve(basis, corners).min(1)) - 1,
        np.ceil(np.linalg.solve(basis, corners).max(1)) + 1,
    )
    n1, n2 = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1), indexing="ij")
    atoms = honeycomb(n1, n2) + shift @ basis.T
    frac = np.linalg.solve(supercell, atoms.T).T
    frac = np.clip(frac[np.all((frac >= -1e-9) & (frac < 1 - 1e-9), axis=1)], 0, None)
    strain = np.abs(np.linalg.svd(cell_xy_A * np.linalg.inv(supercell), compute_uv=False) - 1).max()
    return frac * cell_xy_A, float(strain)


def _build_graphene(params, cell_xy_A, rng):
    n_layers = int(rng.integers(params["layers"][0], params["layers"][1] + 1))
    layers, angles, strains = [], [], []
    for k in range(n_layers):
        angle = float(rng.uniform(0, np.pi / 3))
        xy, strain = graphene_layer(cell_xy_A, angle, rng.random(2))
        layers.append(np.column_stack([xy, np.full(len(xy), k * params["interlayer_A"])]))
        angles.append(float(np.rad2deg(angle)))
        strains.append(strain)
    positions = np.concatenate(layers)
    facts = {
        "thickness_A": n_layers * params["interlayer_A"],
        "layers": n_layers,
        "rotation_deg": angles,
        "strain": strains,
    }
    return _with_holes(np.full(len(positions), 6, np.uint8), positions, params, cell_xy_A, rng, facts)


def _check_graphene(params, cell_xy_A):
    _check_holes(params, cell_xy_A)
    if cell_xy_A < 40:
        raise ValueError(
            f"substrate.kind: graphene needs a cell of at least 40 A to stay under 2.5 % strain ({cell_xy_A:g} A)"
        )


# ---------------------------------------------------------------- graphitic onions

_PHI = (1 + np.sqrt(5)) / 2
_ICOSAHEDRON = np.array(
    [(0, s1, s2 * _PHI) for s1 in (-1, 1) for s2 in (-1, 1)]
    + [(s1, s2 * _PHI, 0) for s1 in (-1, 1) for s2 in (-1, 1)]
    + [(s2 * _PHI, 0, s1) for s1 in (-1, 1) for s2 in (-1, 1)],
    dtype=float,
)  # edge 2, inradius phi^2 / sqrt(3)
_ICOSAHEDRON_INRADIUS = _PHI**2 / np.sqrt(3)


@functools.lru_cache(maxsize=None)
def _icosahedron_faces() -> np.ndarray:
    """(20, 3) vertex indices, counter-clockwise seen from outside."""
    faces = ConvexHull(_ICOSAHEDRON).simplices.copy()
    for face in faces:
        a, b, c = _ICOSAHEDRON[face]
        if np.dot(np.cross(b - a, c - a), a) < 0:
            face[[1, 2]] = face[[2, 1]]
    return faces


@functools.lru_cache(maxsize=None)
def _goldberg_face(h: int, k: int) -> np.ndarray:
    """Barycentric coordinates (n, 2) of the graphene atoms in the triangle of hexagon centres
    0, h a1 + k a2 and its 60-degree rotation (one face of the Goldberg polyhedron (h, k))."""
    n = h + k + 1
    n1, n2 = np.meshgrid(np.arange(-n, 2 * n + 1), np.arange(-n, 2 * n + 1), indexing="ij")
    atoms = honeycomb(n1, n2)
    p1 = h * np.array([GRAPHENE_A, 0.0]) + k * np.array([GRAPHENE_A / 2, GRAPHENE_A * np.sqrt(3) / 2])
    p2 = np.array([[0.5, -np.sqrt(3) / 2], [np.sqrt(3) / 2, 0.5]]) @ p1
    lam = np.linalg.solve(np.column_stack([p1, p2]), atoms.T).T
    eps = 1e-6
    return lam[(lam[:, 0] >= -eps) & (lam[:, 1] >= -eps) & (lam.sum(1) <= 1 + eps)]


@functools.lru_cache(maxsize=None)
def _loeschian() -> tuple[np.ndarray, np.ndarray]:
    """Goldberg indices (h, k), h >= k >= 0, and their T = h^2 + hk + k^2, up to T of a 25 nm shell."""
    hk = np.array([(h, k) for h in range(1, 120) for k in range(h + 1)])
    return hk, hk[:, 0] ** 2 + hk[:, 0] * hk[:, 1] + hk[:, 1] ** 2


def goldberg_shell(radius_A: float, shape: str = "spherical") -> tuple[np.ndarray, tuple[int, int]]:
    """A closed graphitic shell from the icosahedral Goldberg polyhedron (h, k): graphene triangles
    on the 20 faces, 12 pentagons at the vertices; (h, k) chosen so the graphene strain is smallest.

    ``polyhedral``: flat facets whose distance from the centre is ``radius_A`` (graphitised
    carbon). ``spherical``: every atom pushed radially onto the sphere of ``radius_A`` (the
    polyhedron of the sphere's area), as in carbon onions and carbon black; bonds then have a
    median of 1.44 A, 90 % within 1.22-1.55 A (compressed towards the pentagons; measured at 20-60 A). Returns (positions, (h, k)).
    """
    hk, t = _loeschian()
    if shape == "polyhedral":
        edge_A = 2 * radius_A / _ICOSAHEDRON_INRADIUS
    else:  # 20 faces of side s have the sphere's area: 5 sqrt(3) s^2 = 4 pi r^2
        edge_A = radius_A * np.sqrt(4 * np.pi / (5 * np.sqrt(3)))
    h, k = hk[np.argmin(np.abs(np.sqrt(t) * GRAPHENE_A - edge_A))]
    lam = _goldberg_face(int(h), int(k))
    vertices = _ICOSAHEDRON[_icosahedron_faces()] * (edge_A / 2)  # (20, 3 vertices, 3)
    v0, e1, e2 = vertices[:, 0], vertices[:, 1] - vertices[:, 0], vertices[:, 2] - vertices[:, 0]
    points = (v0[:, None] + lam[None, :, :1] * e1[:, None] + lam[None, :, 1:] * e2[:, None]).reshape(-1, 3)
    pairs = cKDTree(points).query_pairs(0.3, output_type="ndarray")  # atoms on shared edges
    points = points[np.setdiff1d(np.arange(len(points)), pairs[:, 1])]
    if shape == "spherical":
        points *= radius_A / np.linalg.norm(points, axis=1, keepdims=True)
    return points, (int(h), int(k))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (from a normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _slab_volume(radius_A: float, centre_z_A: float, thickness_A: float) -> float:
    """Volume of a sphere between the planes z = 0 and z = thickness."""
    a, b = np.clip([-centre_z_A, thickness_A - centre_z_A], -radius_A, radius_A)
    return float(np.pi * ((radius_A**2 * b - b**3 / 3) - (radius_A**2 * a - a**3 / 3)))


def _build_graphitic(params, cell_xy_A, rng):
    thickness_A = float(rng.uniform(*params["thickness_A"]))
    spacing = params["interlayer_A"]
    onions, parts, filled = [], [], 0.0
    while filled < params["fill_fraction"] * cell_xy_A**2 * thickness_A and len(onions) < MAX_ONIONS:
        radius = float(rng.uniform(*params["onion_radius_A"]))
        depth = float(rng.uniform(*params["shell_thickness_A"]))
        centre = rng.random(3) * (cell_xy_A, cell_xy_A, thickness_A)
        rotation = random_rotation(rng)
        radii = radius - spacing * np.arange(int(min(depth, radius - spacing) // spacing) + 1)
        shells = np.concatenate([goldberg_shell(r, params["shape"])[0] for r in radii]) @ rotation.T + centre
        for earlier in onions:  # a later onion is cut where it enters an earlier one
            delta = _minimum_image(shells - earlier["centre_A"], cell_xy_A)
            shells = shells[np.einsum("ij,ij->i", delta, delta) > (earlier["radius_A"] + spacing / 2) ** 2]
        parts.append(shells[(shells[:, 2] >= 0) & (shells[:, 2] < thickness_A)])
        onions.append({"centre_A": centre.tolist(), "radius_A": radius, "shells": len(radii)})
        filled += _slab_volume(radius, centre[2], thickness_A)
    positions = np.concatenate(parts)
    positions[:, :2] %= cell_xy_A
    positions = positions[_drop_overlaps(positions, cell_xy_A, thickness_A)]
    return np.full(len(positions), 6, np.uint8), positions, {"thickness_A": thickness_A, "onions": onions}


def _check_graphitic(params, cell_xy_A):
    if 2 * params["onion_radius_A"][1] >= cell_xy_A:
        raise ValueError(
            f"substrate.onion_radius_A: an onion of radius {params['onion_radius_A'][1]} A does not fit the "
            f"{cell_xy_A:g} A cell without meeting its own periodic image (diameter must be smaller than the cell)"
        )
    if params["onion_radius_A"][0] < 2 * params["interlayer_A"]:
        raise ValueError(
            f"substrate.onion_radius_A: {params['onion_radius_A'][0]} A is smaller than two shells "
            f"(2 x substrate.interlayer_A = {2 * params['interlayer_A']:g} A)"
        )


# ---------------------------------------------------------------- registry

_RANGE = {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2, "maxItems": 2}
_THICKNESS = _RANGE | {"description": "slab thickness range [A]"}
_CARBON_DENSITY = {
    "type": "number",
    "exclusiveMinimum": 0,
    "maximum": MAX_CARBON_DENSITY_G_CM3,
    "default": 2.0,
    "description": "film density [g/cm3]",
}
_HOLES = {
    "hole_radius_A": _RANGE | {"default": [20.0, 40.0], "description": "hole radius range [A]"},
    "hole_fraction": {
        "type": "number",
        "minimum": 0,
        "maximum": 0.9,
        "description": "projected area fraction of the cell open as holes",
    },
}
_INTERLAYER = {"type": "number", "minimum": 3.0, "maximum": 4.0, "description": "graphitic interlayer spacing [A]"}

SUPPORTS: dict[str, Support] = {
    s.name: s
    for s in [
        Support(
            "amorphous",
            {"thickness_A": _THICKNESS | {"default": [20.0, 60.0]}, "density_g_cm3": _CARBON_DENSITY},
            _build_amorphous,
            _check_nothing,
        ),
        Support(
            "holey",
            {
                "thickness_A": _THICKNESS | {"default": [20.0, 60.0]},
                "density_g_cm3": _CARBON_DENSITY,
                **_HOLES,
                "hole_fraction": _HOLES["hole_fraction"] | {"default": 0.3},
            },
            _build_holey,
            _check_holes,
        ),
        Support(
            "graphene",
            {
                "layers": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": 50},
                    "minItems": 2,
                    "maxItems": 2,
                    "default": [1, 3],
                    "description": "number of layers (range)",
                },
                "interlayer_A": _INTERLAYER | {"default": 3.35},
                **_HOLES,
                "hole_fraction": _HOLES["hole_fraction"] | {"default": 0.0},
            },
            _build_graphene,
            _check_graphene,
        ),
        Support(
            "graphitic",
            {
                "thickness_A": _THICKNESS | {"default": [40.0, 80.0]},
                "onion_radius_A": _RANGE | {"default": [25.0, 50.0], "description": "outer shell radius range [A]"},
                "shell_thickness_A": _RANGE
                | {"default": [10.0, 25.0], "description": "depth of the graphitic shells below the surface [A]"},
                "interlayer_A": _INTERLAYER | {"default": 3.40},
                "shape": {
                    "enum": ["spherical", "polyhedral"],
                    "default": "spherical",
                    "description": "shell shape: carbon-black onions (spherical) or graphitised carbon (polyhedral)",
                },
                "fill_fraction": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1,
                    "default": 0.6,
                    "description": "onion volume per slab volume",
                },
            },
            _build_graphitic,
            _check_graphitic,
        ),
        Support(
            "silica",
            {
                "thickness_A": _THICKNESS | {"default": [20.0, 60.0]},
                "density_g_cm3": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_SILICA_DENSITY_G_CM3,
                    "default": 2.2,
                    "description": "density [g/cm3]",
                },
            },
            _build_silica,
            _check_nothing,
            elements=("Si", "O"),
        ),
    ]
}
