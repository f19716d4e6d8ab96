"""Tests of emsim.simulation.structures: lattices, particles, carbon, scenes, files, validation."""

import json

import h5py
import numpy as np
import pytest
from ase.data import atomic_numbers
from ase.units import _Nav
from scipy.spatial import cKDTree

from emsim.simulation import structures as S
from emsim.simulation import supports

# Published lattice constants (A): a, c, and the wurtzite/spinel internal parameter (spinel u in origin choice 1).
EXPECTED = {
    "CdSe_wurtzite": (4.2985, 7.0152),
    "ZnS_wurtzite": (3.8227, 6.2607),
    "Cu_fcc": (3.6157, None),
    "Ag_fcc": (4.0782, None),
    "Au_fcc": (4.078, None),
    "Pt_fcc": (3.924, None),
    "C_diamond": (3.5673, None),
    "Si_diamond": (5.430, None),
    "Fe3O4_spinel": (8.394, None),
    "Co3O4_spinel": (8.065, None),
    "Fe_bcc": (2.866, None),
}


def nearest_neighbour_A(lat: S.Lattice) -> float:
    """Analytic shortest interatomic distance of each structure type."""
    a, c = EXPECTED[lat.name]
    if lat.kind == "fcc":
        return a / np.sqrt(2)
    if lat.kind == "bcc":
        return a * np.sqrt(3) / 2
    if lat.kind == "diamond":
        return a * np.sqrt(3) / 4
    if lat.kind == "wurtzite":
        u = 0.375
        return min(u * c, np.sqrt(a**2 / 3 + ((0.5 - u) * c) ** 2))
    u1 = lat.u + 1 / 8  # Sickafus et al. (1999): tetrahedral and octahedral cation-oxygen bonds, origin choice 1
    return a * min(np.sqrt(3) * (u1 - 1 / 4), np.sqrt(3 * u1**2 - 11 / 4 * u1 + 43 / 64))


def min_distance_A(positions, boxsize=None) -> float:
    tree = cKDTree(positions, boxsize=boxsize)
    distance, _ = tree.query(positions, k=2)
    return float(distance[:, 1].min())


def column_fraction(positions, cell_xy_A=None, tol_A=0.02) -> float:
    """Fraction of atoms sharing their x/y (within tol) with another atom: ~1 on a zone axis."""
    box = None if cell_xy_A is None else [cell_xy_A, cell_xy_A]
    distance, _ = cKDTree(positions[:, :2], boxsize=box).query(positions[:, :2], k=2)
    return float(np.mean(distance[:, 1] < tol_A))


PARTICLES = {
    "lattice": "CdSe_wurtzite",
    "radius_A": [6.0, 9.0],
    "count": [2, 3],
    "min_gap_A": 5.0,
    "stacking_faults": [0, 1],
    "orientation": "zone_axis",
    "mistilt_deg": 2.0,
}
SUBSTRATE = {"thickness_A": [6.0, 10.0], "density_g_cm3": 2.0}
SPEC = {"n_structures": 4, "seed": 7, "particles": PARTICLES, "substrate": SUBSTRATE}


@pytest.fixture(scope="module")
def scenes():
    return S.build_structure_set(SPEC, 50.0, range(4))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_lattice_constants_and_nearest_neighbours(name):
    lat = S.LATTICES[name]
    assert (lat.a_A, lat.c_A) == EXPECTED[name]
    unit = lat.unit_cell()
    assert len(unit) == {"wurtzite": 4, "fcc": 4, "bcc": 2, "diamond": 8, "spinel": 56}[lat.kind]
    if lat.kind == "spinel":
        assert np.sum(unit.numbers == 8) == 32
    particle = S.nanoparticle(lat, 9.0, 0, np.random.default_rng(0))
    assert np.linalg.norm(particle.positions, axis=1).max() <= 9.0
    assert min_distance_A(particle.positions) == pytest.approx(nearest_neighbour_A(lat), abs=1e-6)
    density_particle = len(particle) / (4 / 3 * np.pi * 9.0**3)
    assert density_particle == pytest.approx(len(unit) / unit.get_volume(), rel=0.2)


def stacking_sites(lat: S.Lattice, particle) -> list[int]:
    """In-plane site (0, 1, 2 = A, B, C up to a relabelling) of each cation layer, bottom to top."""
    cations = particle.positions[particle.numbers == atomic_numbers[lat.symbols[0]]]
    cations = cations - cations[np.argmin(cations[:, 2])]
    layer = np.round(cations[:, 2] / (lat.c_A / 2)).astype(int)
    assert np.allclose(layer * lat.c_A / 2, cations[:, 2], atol=1e-6)  # flat (0001) layers
    to_frac = np.linalg.inv(np.array([[lat.a_A, 0.0], [-lat.a_A / 2, lat.a_A * np.sqrt(3) / 2]]))
    frac = cations[:, :2] @ to_frac
    site = np.round(3 * (frac[:, 0] - frac[:, 1])).astype(int) % 3  # A, B, C: f1 - f2 = 0, -1/3, 1/3 (mod 1)
    sites = []
    for k in range(layer.max() + 1):
        assert len(set(site[layer == k])) == 1  # every layer is one close-packed site
        sites.append(int(site[layer == k][0]))
    return sites


@pytest.mark.parametrize("name", ["CdSe_wurtzite", "ZnS_wurtzite"])
@pytest.mark.parametrize("n_faults", [0, 1, 2])
def test_stacking_faults_change_the_stacking(name, n_faults):
    lat = S.LATTICES[name]
    particle = S.nanoparticle(lat, 20.0, n_faults, np.random.default_rng(n_faults))
    sites = stacking_sites(lat, particle)
    violations = sum(sites[k] != sites[k - 2] for k in range(2, len(sites)))
    assert violations == n_faults == len(particle.info["fault_z_A"])
    assert all(sites[k] != sites[k - 1] for k in range(1, len(sites)))  # still close packed
    if n_faults == 0:
        assert min_distance_A(particle.positions) == pytest.approx(nearest_neighbour_A(lat), abs=1e-6)


def test_too_many_faults_for_the_radius_is_an_error():
    with pytest.raises(ValueError, match="particles.stacking_faults"):
        S.nanoparticle(S.LATTICES["CdSe_wurtzite"], 6.0, 3, np.random.default_rng(0))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_zone_axes_are_columns_along_z(name):
    lat = S.LATTICES[name]
    particle = S.nanoparticle(lat, 18.0 if lat.kind == "spinel" else 12.0, 0, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(12):
        matrix, record = S.orientation(lat, "zone_axis", 0.0, rng)
        seen.add(record["zone_axis"])
        assert column_fraction(particle.positions @ matrix.T) > 0.8
        tilted, record = S.orientation(lat, "zone_axis", 3.0, rng)
        uvw = dict(S.ZONE_AXES[lat.kind])[record["zone_axis"]]
        angle = np.degrees(np.arccos((tilted @ S.zone_axis_direction(lat, uvw))[2]))
        assert angle == pytest.approx(record["mistilt_deg"], abs=1e-6) and angle <= 3.0
        assert np.allclose(tilted @ tilted.T, np.eye(3))
    assert seen == {label for label, _ in S.ZONE_AXES[lat.kind]}
    first, second, third = (S.zone_axis_direction(lat, uvw) for _, uvw in S.ZONE_AXES[lat.kind])
    angles = np.degrees(np.arccos([first @ second, first @ third, second @ third]))
    expected = [90, 90, 90] if lat.kind == "wurtzite" else [45, 54.7356, 35.2644]  # [2-1-10], [01-10], [0001]
    assert np.allclose(angles, expected, atol=1e-3)
    random, record = S.orientation(lat, "random", 0.0, rng)
    assert record["zone_axis"] is None and np.isclose(np.linalg.det(random), 1.0)
    assert column_fraction(particle.positions @ random.T) < 0.1


def test_random_rotation_is_uniform():
    rng = np.random.default_rng(3)
    z_images = np.array([S.orientation(S.LATTICES["Au_fcc"], "random", 0.0, rng)[0][:, 2] for _ in range(2000)])
    assert np.abs(z_images.mean(axis=0)).max() < 0.05  # isotropic: mean direction ~ 0
    assert np.mean(z_images[:, 2] ** 2) == pytest.approx(1 / 3, abs=0.03)


def test_carbon_hard_core_periodic_and_dense():
    cell_xy_A, thickness_A = 40.0, 20.0
    carbon = supports.amorphous_carbon(cell_xy_A, thickness_A, 2.0, np.random.default_rng(4))
    assert carbon.min() >= 0 and carbon[:, :2].max() < cell_xy_A and carbon[:, 2].max() < thickness_A
    # minimum image in x/y: pairs across the cell edges count too
    assert min_distance_A(carbon, boxsize=[cell_xy_A, cell_xy_A, 1e6]) >= supports.CARBON_MIN_DISTANCE_A
    near_edge = (carbon[:, 0] < 0.5) | (carbon[:, 0] > cell_xy_A - 0.5)
    assert near_edge.sum() > 50  # atoms reach the edges: no depleted seam
    density = len(carbon) * 12.011 / _Nav / (cell_xy_A**2 * thickness_A * 1e-24)
    assert density == pytest.approx(2.0, rel=1e-3)
    counts, _ = np.histogramdd(carbon, bins=(4, 4, 2), range=[(0, cell_xy_A)] * 2 + [(0, thickness_A)])
    assert counts.min() > 0.7 * counts.mean()  # uniform, no holes
    # pair correlation g(r) around atoms away from the surfaces: a contact peak, then flat (amorphous)
    tree, centre = cKDTree(carbon, boxsize=[cell_xy_A, cell_xy_A, 1e6]), carbon[np.abs(carbon[:, 2] - 10) < 4]
    rho = len(carbon) / (cell_xy_A**2 * thickness_A)

    def g(r0, r1):
        count = tree.query_ball_point(centre, r1, return_length=True) - tree.query_ball_point(
            centre, r0, return_length=True
        )
        return count.sum() / (len(centre) * rho * 4 / 3 * np.pi * (r1**3 - r0**3))

    assert 1.0 < g(1.4, 1.6) < 1.6 and g(3.0, 5.0) == pytest.approx(1.0, abs=0.05)


def test_scene_particles_gap_count_radius_and_layout(scenes):
    cell_xy_A = 50.0
    for scene in scenes:
        info = scene.info
        assert 2 <= info["n_particles"] <= 3 and len(info["radii_A"]) == info["n_particles"]
        assert all(6.0 <= r <= 9.0 for r in info["radii_A"])
        assert 6.0 <= info["substrate_thickness_A"] <= 10.0
        assert all(n in (0, 1) for n in info["n_faults"]) and all(
            z in {"[2-1-10]", "[01-10]", "[0001]"} for z in info["zone_axes"]
        )
        particle = scene.positions_A[scene.is_particle].astype(float)
        carbon = scene.positions_A[~scene.is_particle].astype(float)
        assert (scene.positions_A[:, :2] >= 0).all() and (scene.positions_A[:, :2] < cell_xy_A).all()
        assert np.all(scene.numbers[~scene.is_particle] == 6) and set(scene.numbers[scene.is_particle]) == {48, 34}
        # each particle atom lies in exactly its own sphere (minimum image in x/y)
        centres, radii = np.array(info["centres_A"]), np.array(info["radii_A"])
        delta = particle[:, None, :] - centres[None, :, :]
        delta[..., :2] -= cell_xy_A * np.round(delta[..., :2] / cell_xy_A)
        inside = np.linalg.norm(delta, axis=2) <= radii + 1e-3
        assert np.all(inside.sum(axis=1) == 1)
        owner = inside.argmax(axis=1)
        for i in range(len(radii)):
            for j in range(i):
                d = centres[i, :2] - centres[j, :2]
                d -= cell_xy_A * np.round(d / cell_xy_A)
                assert np.hypot(*d) >= radii[i] + radii[j] + 5.0
                other = cKDTree(particle[owner == j, :2], boxsize=[cell_xy_A] * 2)
                assert other.query(particle[owner == i, :2])[0].min() >= 5.0  # projected gap
        # particles above the carbon, all resting on its surface
        assert particle[:, 2].max() + S.CONTACT_GAP_A == pytest.approx(carbon[:, 2].min(), abs=0.05)
        for i in range(len(radii)):
            assert particle[owner == i, 2].max() == pytest.approx(particle[:, 2].max(), abs=1e-3)
        assert particle[:, 2].min() == pytest.approx(S.VACUUM_MARGIN_A, abs=1e-3)
        assert scene.cell_A[2] == pytest.approx(carbon[:, 2].max() + S.VACUUM_MARGIN_A, abs=0.05)
        assert min_distance_A(carbon, boxsize=[cell_xy_A, cell_xy_A, 1e6]) >= supports.CARBON_MIN_DISTANCE_A - 1e-4


def test_scene_atoms_and_particle_cut(scenes):
    scene = scenes[0]
    atoms, particles = scene.atoms(), scene.particle_atoms()
    assert list(atoms.pbc) == [True, True, False] and list(particles.pbc) == [True, True, False]
    assert np.allclose(atoms.cell.lengths(), scene.cell_A)
    assert len(atoms) == len(scene.numbers) and len(particles) == scene.is_particle.sum()
    assert particles.cell.lengths()[:2].tolist() == [50.0, 50.0]
    assert particles.cell.lengths()[2] == pytest.approx(particles.positions[:, 2].max() + S.VACUUM_MARGIN_A)
    assert particles.cell.lengths()[2] < scene.positions_A[~scene.is_particle, 2].min()  # no carbon-side vacuum
    assert np.allclose(particles.positions, atoms.positions[scene.is_particle])


def test_zone_axis_scene_shows_columns():
    particles = PARTICLES | {"lattice": "Au_fcc", "count": [1, 1], "mistilt_deg": 0.0, "stacking_faults": [1, 2]}
    scene = S.build_scene(particles, SUBSTRATE, 40.0, np.random.default_rng(5))
    assert scene.info["n_faults"] == [0]  # faults apply to wurtzite only
    assert column_fraction(scene.positions_A[scene.is_particle].astype(float), 40.0, tol_A=0.01) > 0.8
    scene = S.build_scene(particles | {"orientation": "random"}, SUBSTRATE, 40.0, np.random.default_rng(5))
    assert scene.info["zone_axes"] == [None]
    assert column_fraction(scene.positions_A[scene.is_particle].astype(float), 40.0, tol_A=0.01) < 0.3


def assert_same(a: S.Scene, b: S.Scene):
    assert a.cell_A == b.cell_A and a.info == b.info
    for field in ("numbers", "positions_A", "is_particle"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_reproducible_and_shard_independent(scenes):
    again = S.build_structure_set(SPEC, 50.0, range(2, 4))
    assert_same(again[0], scenes[2])
    assert_same(again[1], scenes[3])
    assert not np.array_equal(scenes[0].positions_A[:100], scenes[1].positions_A[:100])
    other_seed = S.build_structure_set(SPEC | {"seed": 8}, 50.0, range(1))[0]
    assert not np.array_equal(other_seed.positions_A[:100], scenes[0].positions_A[:100])
    scene = scenes[0]
    assert scene.numbers.dtype == np.uint8 and scene.positions_A.dtype == np.float32 and scene.is_particle.dtype == bool
    json.dumps(scene.info)


def test_save_load_round_trip(scenes, tmp_path):
    path = tmp_path / "scenes.h5"
    S.save_scenes(path, scenes, {"config": {"seed": 7}, "name": "cdse"})
    assert not (tmp_path / "scenes.h5.tmp").exists()
    loaded = S.load_scenes(path)
    assert len(loaded) == len(scenes)
    for a, b in zip(scenes, loaded):
        assert_same(a, b)
    with h5py.File(path) as f:
        assert json.loads(f.attrs["config"]) == {"seed": 7}
    second = tmp_path / "again.h5"
    S.save_scenes(second, S.build_structure_set(SPEC, 50.0, range(4)), {"config": {"seed": 7}, "name": "cdse"})
    assert second.read_bytes() == path.read_bytes()


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1]
    with pytest.raises(ValueError, match="other.h5"):
        S.load_scenes(path)


@pytest.mark.parametrize(
    ("particles", "key"),
    [
        ({"radius_A": [30, 30]}, "particles.radius_A"),
        ({"count": [12, 12]}, "particles.count"),
    ],
)
def test_validation_errors_name_the_key(particles, key):
    with pytest.raises(ValueError, match=key):
        S.build_scene(PARTICLES | particles, SUBSTRATE, 50.0, np.random.default_rng(0))


def test_partial_blocks_get_the_schema_defaults():
    particles = S.with_defaults({"lattice": "Au_fcc", "radius_A": [5, 6]}, S.PARTICLES_SCHEMA)
    assert particles["orientation"] == "zone_axis" and particles["count"] == [1, 1]
    assert supports.with_defaults(None) == {"thickness_A": [20.0, 60.0], "density_g_cm3": 2.0}
    assert supports.with_defaults({"density_g_cm3": 1.5})["density_g_cm3"] == 1.5


def test_structure_set_index_outside_the_set():
    with pytest.raises(ValueError, match="n_structures"):
        S.build_structure_set(SPEC, 50.0, range(3, 5))


def test_substrate_only_scene_and_impossible_density():
    scene = S.build_scene(PARTICLES | {"count": [0, 0]}, SUBSTRATE, 30.0, np.random.default_rng(6))
    assert scene.info["n_particles"] == 0 and not scene.is_particle.any() and len(scene.particle_atoms()) == 0
    dense = supports.amorphous_carbon(20.0, 10.0, 3.5, np.random.default_rng(0))  # diamond density
    assert len(dense) == round(3.5 / 12.011 * _Nav * 4000e-24)
    with pytest.raises(ValueError, match="substrate.density_g_cm3"):
        supports.amorphous_carbon(20.0, 5.0, 6.0, np.random.default_rng(0))


@pytest.mark.parametrize("radius_A", [5.0, 8.0, 12.3])
def test_stacking_fault_room_checked_at_load_always_fits(radius_A):
    lattice = S.LATTICES["CdSe_wurtzite"]
    room = int(np.floor(2 * radius_A / lattice.c_A))
    particles = {"lattice": "CdSe_wurtzite", "radius_A": [radius_A, radius_A], "stacking_faults": [0, room]}
    S.check_stacking_faults(particles)  # accepted: every random centre has room
    for seed in range(30):
        S._wurtzite_sphere(lattice, radius_A, room, np.random.default_rng(seed))
    with pytest.raises(ValueError, match="particles.stacking_faults"):
        S.check_stacking_faults(particles | {"stacking_faults": [0, room + 1]})
