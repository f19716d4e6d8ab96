"""Labels from the particle-in-vacuum wave and from the projected potential (real abTEM), projected-atom masks."""

from dataclasses import replace

import ase
import numpy as np
import pytest
from ase.build import bulk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from emsim.simulation import labels, simulate
from emsim.study.settings import Labels, Simulation

CELL_A = 40.0
SIM = Simulation.with_defaults(sampling_A=0.1, phonon_sigma_A=0.1, shard_size=1, calibrate_zero_defocus=False)
LABELS = Labels.with_defaults(method="phase", threshold_rad=np.pi / 16, blur_A=1.0)


@pytest.fixture(scope="module")
def particle():
    """Randomly oriented Au sphere, radius 16 A, in a 40 A cell cut just below it."""
    crystal = bulk("Au", "fcc", a=4.078, cubic=True).repeat((16, 16, 16))
    positions = (crystal.positions - crystal.positions.mean(0)) @ Rotation.random(random_state=1).as_matrix().T
    positions = positions[np.linalg.norm(positions, axis=1) < 16.0] + [CELL_A / 2, CELL_A / 2, 17.0]
    atoms = ase.Atoms(f"Au{len(positions)}", positions=positions, cell=[CELL_A, CELL_A, 34.0], pbc=(True, True, False))
    return atoms, simulate.vacuum_exit_wave(atoms, SIM, 300e3)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_label_is_solid_and_matches_projected_atoms(particle):
    atoms, wave = particle
    label = labels.label_from_vacuum_wave(wave, 0.1, 0.2, 200)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    atoms_mask = labels.projected_atom_mask(atoms.positions, CELL_A, 200, radius_A=1.0)
    assert iou(label.astype(bool), atoms_mask) >= 0.8
    assert np.array_equal(ndimage.binary_fill_holes(label), label.astype(bool))


def test_potential_label_follows_the_outline_at_least_as_closely_as_the_phase_label(particle):
    atoms, wave = particle
    outline = labels.projected_atom_mask(atoms.positions, CELL_A, 200, radius_A=1.5)
    phase = labels.label(wave, atoms, SIM, 300e3, 0.2, 200, LABELS).astype(bool)
    potential = labels.label(wave, atoms, SIM, 300e3, 0.2, 200, replace(LABELS, method="potential")).astype(bool)
    assert np.array_equal(ndimage.binary_fill_holes(potential), potential)
    assert iou(potential, outline) >= 0.8 and iou(potential, outline) >= iou(phase, outline) - 0.02
    atoms_label = labels.label(wave, atoms, SIM, 300e3, 0.2, 200, replace(LABELS, method="atoms", blur_A=0.4)).astype(
        bool
    )
    assert iou(atoms_label, ndimage.binary_fill_holes(outline)) >= 0.95 > iou(potential, outline)
    with pytest.raises(ValueError, match="labels.method"):
        labels.label(wave, atoms, SIM, 300e3, 0.2, 200, replace(LABELS, method="outline"))


def test_label_fills_holes_across_the_periodic_edge():
    n, sampling = 128, 0.2
    x = np.arange(n) * sampling
    dx = (x[:, None] - 1.0 + n * sampling / 2) % (n * sampling) - n * sampling / 2  # centre at x = 1 A
    dy = x[None, :] - 12.8
    r = np.hypot(dx, dy)
    ring = np.where((r > 3.0) & (r < 5.0), 0.5, 0.0)  # a phase annulus straddling the x = 0 edge
    label = labels.label_from_vacuum_wave(np.exp(1j * ring), sampling, 0.2, n, lowpass_sigma_A=0.2, blur_A=0.4)
    assert label[5, 64] == 1 and label[-1, 64] == 1  # hole filled, on both sides of the edge
    assert label[64, 64] == 0 and label[5, 10] == 0


def test_projected_atom_mask_disk_and_wrap():
    mask = labels.projected_atom_mask(np.array([[0.0, 0.0, 5.0]]), 12.8, 128, radius_A=1.0)
    assert mask.sum() == pytest.approx(np.pi * (1.0 / 0.1) ** 2, rel=0.05)
    assert mask[0, 0] and mask[-5, -5] and mask[5, -5] and not mask[64, 64]
