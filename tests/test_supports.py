"""Supports under the particles: each kind's atoms, density and spectrum, shared particles, bad input."""

import copy
import hashlib
import json
from pathlib import Path

import abtem
import ase
import ase.build
import numpy as np
import pytest
import yaml
from ase.data import atomic_masses
from ase.units import _Nav
from scipy.spatial import cKDTree

from emsim.simulation import simulate, structures, supports
from emsim.study import config
from emsim.study.settings import Simulation

ROOT = Path(__file__).resolve().parents[1]

PARTICLES = {"lattice": "Pt_fcc", "radius_A": [6, 8], "count": [1, 2], "min_gap_A": 3}
EXACT_SIM = Simulation.with_defaults(
    sampling_A=0.2, frozen_phonons=1, phonon_sigma_A=0.0, shard_size=1, calibrate_zero_defocus=False
)


def nearest_A(positions, box):
    distance, _ = cKDTree(positions, boxsize=box).query(positions, k=2)
    return distance[:, 1]


def test_amorphous_scenes_are_unchanged_bytes():
    """The hash of these scenes as made before support kinds existed (commit 55f9844)."""
    spec = {
        "n_structures": 3,
        "seed": 5,
        "particles": {
            "lattice": "CdSe_wurtzite",
            "radius_A": [8, 12],
            "count": [1, 2],
            "stacking_faults": [0, 1],
            "orientation": "random",
        },
        "substrate": {"thickness_A": [10, 20]},
    }
    digest = hashlib.sha256()
    for scene in structures.build_structure_set(spec, 64.0, range(3)):
        digest.update(scene.numbers.tobytes() + scene.positions_A.tobytes())
        digest.update(json.dumps(scene.info, sort_keys=True).encode())
    assert digest.hexdigest() == "1d601b7ddde1ab7cd084b8aea48dbfd68a6d33f4c39eb1193e5d0c68bb2d304b"


@pytest.mark.parametrize("kind", ["holey", "graphene", "graphitic", "silica"])
def test_sets_differing_in_their_support_share_their_particles(kind):
    spec = {"n_structures": 2, "seed": 4, "particles": PARTICLES}
    plain = structures.build_structure_set(spec | {"substrate": {}}, 64.0, range(2))
    other = structures.build_structure_set(spec | {"substrate": {"kind": kind}}, 64.0, range(2))
    for a, b in zip(plain, other):
        assert np.array_equal(a.positions_A[a.is_particle], b.positions_A[b.is_particle])
        assert np.array_equal(a.numbers[a.is_particle], b.numbers[b.is_particle])
        assert b.info["support"] == kind and b.info["n_support"] == (~b.is_particle).sum() > 0
        support_z = b.positions_A[~b.is_particle, 2]
        assert support_z.min() >= b.info["substrate_top_A"] - 1e-3
        assert support_z.max() < b.info["substrate_top_A"] + b.info["substrate_thickness_A"] + 1e-3


@pytest.mark.parametrize("cell_A", [40.0, 64.0, 134.4])
def test_graphene_layer_is_seamless_at_any_rotation(cell_A):
    for angle_deg in (0.0, 7.0, 13.3, 30.0, 47.0):
        xy, strain = supports.graphene_layer(cell_A, np.deg2rad(angle_deg), np.array([0.3, 0.7]))
        assert strain < (0.025 if cell_A < 64 else 0.015)
        bonds = cKDTree(xy, boxsize=cell_A).query(xy, k=4)[0][:, 1:]
        assert np.abs(bonds - 1.42).max() < 1.42 * (strain + 0.003)  # three bonds per atom, also across the edge
        assert len(xy) / cell_A**2 == pytest.approx(4 / (np.sqrt(3) * supports.GRAPHENE_A**2), rel=2 * strain + 0.01)


def test_graphene_layers_and_holes():
    params = {"kind": "graphene", "layers": [3, 3], "hole_fraction": 0.3, "hole_radius_A": [8, 12]}
    numbers, positions, facts = supports.build(params, 64.0, np.random.default_rng(2))
    assert facts["layers"] == 3 and len(set(facts["rotation_deg"])) == 3
    assert sorted(set(np.round(positions[:, 2], 6))) == pytest.approx([0, 3.35, 6.7])
    per_layer = len(positions) / 3 / 64.0**2
    assert per_layer == pytest.approx(0.7 * 4 / (np.sqrt(3) * supports.GRAPHENE_A**2), rel=0.12)
    for hole in facts["holes"]:
        delta = supports._minimum_image(positions[:, :2] - hole["centre_A"], 64.0)
        assert np.hypot(delta[:, 0], delta[:, 1]).min() >= hole["radius_A"]


def test_holey_film_opens_the_requested_area():
    params = {"kind": "holey", "thickness_A": [20, 20], "hole_fraction": 0.4, "hole_radius_A": [10, 15]}
    _, positions, facts = supports.build(params, 80.0, np.random.default_rng(1))
    grid = (np.stack(np.meshgrid(np.arange(320), np.arange(320), indexing="ij"), -1) + 0.5) / 4
    inside = np.zeros((320, 320), bool)
    for hole in facts["holes"]:
        delta = supports._minimum_image(positions[:, :2] - hole["centre_A"], 80.0)
        assert np.hypot(delta[:, 0], delta[:, 1]).min() >= hole["radius_A"]  # vacuum through the film
        inside |= (
            np.hypot(*supports._minimum_image(grid - hole["centre_A"], 80.0).transpose(2, 0, 1)) < hole["radius_A"]
        )
    last_hole = np.pi * 15**2 / 80.0**2
    assert 0.4 <= inside.mean() <= 0.4 + last_hole and len(facts["holes"]) >= 2
    density = len(positions) / (80.0**2 * (1 - inside.mean()) * 20)
    assert density == pytest.approx(2.0 / atomic_masses[6] * _Nav * 1e-24, rel=0.02)  # the film keeps its density


@pytest.mark.parametrize("shape", ["polyhedral", "spherical"])
def test_goldberg_shells_are_closed_graphene(shape):
    for radius_A in (7.0, 20.0, 40.0):
        points, (h, k) = supports.goldberg_shell(radius_A, shape)
        assert len(points) == 20 * (h * h + h * k + k * k)  # 12 pentagons, the rest hexagons
        bonds = cKDTree(points).query(points, k=4)[0][:, 1:]
        if shape == "polyhedral":
            assert np.median(bonds) == pytest.approx(1.42, abs=0.07 if radius_A < 10 else 0.02)  # (h, k) steps
            assert np.linalg.norm(points, axis=1).min() == pytest.approx(radius_A, abs=1.0)  # face centres
        else:
            assert np.linalg.norm(points, axis=1) == pytest.approx(radius_A)
            low, median, high = np.percentile(bonds, [5, 50, 95])
            assert median == pytest.approx(1.42, abs=0.04) and low > 1.15 and high < 1.6


def test_graphitic_onions_fill_the_slab_without_overlaps():
    params = {"kind": "graphitic", "thickness_A": [40, 40], "onion_radius_A": [20, 28]}
    numbers, positions, facts = supports.build(params, 64.0, np.random.default_rng(0))
    assert (numbers == 6).all() and len(facts["onions"]) >= 2
    assert positions[:, 2].min() >= 0 and positions[:, 2].max() < 40
    assert nearest_A(positions, [64.0, 64.0, 1e6]).min() >= supports.OVERLAP_A
    for onion in facts["onions"]:
        assert 20 <= onion["radius_A"] <= 28 and onion["shells"] >= 3


def test_silica_density_composition_and_hard_cores():
    numbers, positions, facts = supports.build(
        {"kind": "silica", "thickness_A": [20, 20]}, 40.0, np.random.default_rng(3)
    )
    si, o = numbers == 14, numbers == 8
    assert o.sum() == 2 * si.sum() and si.sum() + o.sum() == len(numbers)
    mass_g = (si.sum() * atomic_masses[14] + o.sum() * atomic_masses[8]) / _Nav
    assert mass_g / (40.0**2 * 20 * 1e-24) == pytest.approx(2.2, rel=0.002)  # vitreous silica (Mozzi & Warren 1969)
    box = [40.0, 40.0, 1e6]
    for (a, b), core in supports.SILICA_MIN_DISTANCE_A.items():
        first, second = (
            positions[numbers == ase.data.atomic_numbers[a]],
            positions[numbers == ase.data.atomic_numbers[b]],
        )
        distance, _ = cKDTree(second, boxsize=box).query(first, k=2 if a == b else 1)
        nearest = distance[:, 1] if a == b else distance
        assert nearest.min() >= core - 1e-9
    assert supports.elements({"kind": "silica"}) == ["O", "Si"]


def _phase_spectrum(substrate: dict, cell_A: float, seeds) -> tuple[np.ndarray, np.ndarray]:
    """|k| and summed power spectrum of the exit-wave phase (the ideal phase-contrast image) of support-only scenes."""
    total = 0
    for seed in seeds:
        scene = structures.build_scene(PARTICLES | {"count": [0, 0]}, substrate, cell_A, np.random.default_rng(seed))
        phase = np.angle(simulate.exit_waves(scene.atoms(), EXACT_SIM, 300e3, seed=0)[0])
        total = total + np.abs(np.fft.fft2(phase - phase.mean())) ** 2
    k = np.fft.fftfreq(phase.shape[0], EXACT_SIM.sampling_A)
    return np.hypot(*np.meshgrid(k, k, indexing="ij")).ravel(), total.ravel()


def _peak_spacing_A(k, graphitic, amorphous, band) -> float:
    """Spacing of the strongest peak of graphitic / amorphous power in a |k| band (Gaussian-smoothed radial profile)."""
    inside = (k > band[0]) & (k < band[1])
    grid = np.linspace(*band, 300)
    weight = np.exp(-0.5 * ((k[inside][None] - grid[:, None]) / 0.006) ** 2)
    ratio = (weight * graphitic[inside]).sum(1) / (weight * amorphous[inside]).sum(1)
    return 1 / grid[np.argmax(ratio)]


def test_graphitic_support_shows_the_002_and_100_rings():
    onions = {"kind": "graphitic", "thickness_A": [50, 50], "onion_radius_A": [35, 45], "shell_thickness_A": [25, 30]}
    k, graphitic = _phase_spectrum(onions, 96.0, range(4))
    _, amorphous = _phase_spectrum({"thickness_A": [50, 50]}, 96.0, range(4))
    assert 3.35 <= _peak_spacing_A(k, graphitic, amorphous, (0.22, 0.36)) <= 3.45  # (002), graphite 3.354 A
    assert _peak_spacing_A(k, graphitic, amorphous, (0.40, 0.55)) == pytest.approx(2.13, abs=0.06)  # (100)


def test_graphene_potential_matches_abtem_on_ase_graphene():
    """emsim's layer against ASE's graphene (the independent reference for the atoms), both through
    plain abTEM: the same mean projected potential and the same (100) reflection."""
    layer, _ = supports.graphene_layer(63.96, 0.0, np.zeros(2))
    ours = ase.Atoms(
        "C" * len(layer), positions=np.column_stack([layer, np.full(len(layer), 2.0)]), cell=(63.96, 63.96, 4)
    )
    reference = abtem.orthogonalize_cell(ase.build.graphene(a=supports.GRAPHENE_A, vacuum=2.0)) * (26, 15, 1)
    spectra = []
    for atoms in (ours, reference):
        atoms.pbc = True
        projected = np.asarray(abtem.Potential(atoms, sampling=0.1, slice_thickness=4).project().compute().array)
        power = np.abs(np.fft.fft2(projected)) / projected.size
        k = [np.fft.fftfreq(n, d) for n, d in zip(projected.shape, np.diag(atoms.cell)[:2] / projected.shape)]
        near_100 = np.abs(np.hypot(*np.meshgrid(*k, indexing="ij")) - 1 / 2.13) < 0.006
        spectra.append((projected.mean(), power[near_100].max()))
    (mean, reflection), (ref_mean, ref_reflection) = spectra
    assert mean == pytest.approx(ref_mean, rel=0.01) and reflection == pytest.approx(ref_reflection, rel=0.02)


def _study(**substrate_and_domain) -> dict:
    study = yaml.safe_load((ROOT / "config/test.yaml").read_text())
    study["structure_sets"]["au"]["substrate"] = substrate_and_domain.get("substrate", {"thickness_A": [8, 12]})
    if "structure_set" in substrate_and_domain:
        study["structure_sets"]["au2"] = copy.deepcopy(study["structure_sets"]["au"])
        study["domains"]["df{mean_nm}"]["structure_set"] = substrate_and_domain["structure_set"]
    return study


@pytest.mark.parametrize(
    "substrate, message",
    [
        ({"kind": "nanotube"}, "structure_sets.au.substrate.kind"),
        ({"kind": "graphitic", "interlayer_A": -3.4}, "structure_sets.au.substrate.interlayer_A"),
        ({"kind": "graphitic", "onion_radius_A": [30, 60]}, "structure_sets.au.substrate.onion_radius_A"),
        ({"kind": "graphitic", "onion_radius_A": [20, 10]}, "structure_sets.au.substrate.onion_radius_A: min 20"),
        ({"kind": "holey", "hole_radius_A": [10, 40]}, "structure_sets.au.substrate.hole_radius_A"),
        ({"kind": "silica", "density_g_cm3": 2.6}, "structure_sets.au.substrate.density_g_cm3"),
        ({"kind": "graphene", "thickness_A": [5, 6]}, "structure_sets.au.substrate: Additional properties"),
        ({"kind": "graphene", "layers": [0, 2]}, "structure_sets.au.substrate.layers"),
        ({"thickness_A": [12, 8]}, "structure_sets.au.substrate.thickness_A: min 12"),
    ],
)
def test_bad_supports_are_named_at_load(substrate, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.load(_study(substrate=substrate))


def test_mixture_proportions_are_checked():
    study = config.load(_study(structure_set={"au": 0.25, "au2": 0.75}))
    assert study.domains["df-10"].sets == {"au": 0.25, "au2": 0.75}
    with pytest.raises(config.ConfigError, match=r"domains.df\{mean_nm\}.structure_set|domains.df-10.structure_set"):
        config.load(_study(structure_set={"au": 0.5, "au2": 0.6}))
    with pytest.raises(config.ConfigError, match="'nope' is not a structure set"):
        config.load(_study(structure_set={"au": 0.5, "nope": 0.5}))
