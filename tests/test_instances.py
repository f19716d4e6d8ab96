"""True particle instances of simulated scenes: touching particles stay apart, ids match the table."""

import h5py
import numpy as np
import pytest
from scipy import ndimage

from emsim import data
from emsim.simulation import instances
from emsim.simulation.structures import Scene
from emsim.study.settings import Image

IMAGE = Image(size_px=64, pixel_size_A=0.5, padding_A=4.0, downsample="intensity")  # 40 A cell, 80 px


def disc_atoms(centre, radius_A: float, spacing_A: float = 0.7) -> np.ndarray:
    """Atom positions (n, 3) filling a disc of ``radius_A`` around ``centre`` (x, y)."""
    grid = np.arange(-radius_A, radius_A + 1e-9, spacing_A)
    xy = np.array([(x, y) for x in grid for y in grid if x * x + y * y <= radius_A**2]) + centre
    return np.column_stack([xy, np.full(len(xy), 5.0)])


def scene_of(centres, radii, carbon: int = 50) -> Scene:
    particles = [disc_atoms(np.array(c), r) for c, r in zip(centres, radii)]
    rng = np.random.default_rng(0)
    support = np.column_stack([rng.uniform(0, 40, (carbon, 2)), np.full(carbon, 12.0)])
    positions = np.vstack([*particles, support]) % [40.0, 40.0, 100.0]
    n = sum(len(p) for p in particles)
    return Scene(
        numbers=np.array([78] * n + [6] * carbon, np.uint8),
        positions_A=positions.astype(np.float32),
        is_particle=np.arange(len(positions)) < n,
        cell_A=(40.0, 40.0, 20.0),
        info={
            "lattice": "Pt_fcc",
            "n_particles": len(centres),
            "radii_A": list(radii),
            "centres_A": [[*c, 5.0] for c in centres],
        },
    )


def window_label(scene: Scene) -> np.ndarray:
    """The binary label a segmentation gives: every pixel within 0.5 A of a particle atom, in the window."""
    xx, yy = np.meshgrid(*[(np.arange(80) + 0.5) * 0.5] * 2, indexing="ij")
    label = np.zeros((80, 80), bool)
    for x, y, _ in scene.positions_A[scene.is_particle]:
        label |= (xx - x) ** 2 + (yy - y) ** 2 < 1.0
    return label[8:72, 8:72].astype(np.uint8)


def test_touching_particles_stay_apart():
    scene = scene_of([(16.0, 20.0), (24.5, 20.0)], [4.5, 4.0])  # gap of 0: the labels touch
    label = window_label(scene)
    assert ndimage.label(label)[1] == 1  # one connected component
    found, table = instances.instance_map(scene, label, IMAGE)
    assert set(np.unique(found)) == {0, 1, 2} and ((found > 0) == (label > 0)).all()
    columns = np.nonzero(found == 1)[0], np.nonzero(found == 2)[0]  # x (first axis) of each one's pixels
    assert columns[0].max() <= columns[1].min() + 1  # split where they meet, not mixed
    assert [row["instance"] for row in table] == [1, 2] and table[0]["lattice"] == "Pt_fcc"
    for row in table:
        area = (found == row["instance"]).sum()
        assert row["diameter_nm"] == pytest.approx(2 * np.sqrt(area / np.pi) * 0.05)
        assert row["visible_fraction"] == 1.0


def test_particle_across_the_cell_edge_is_one_instance():
    scene = scene_of([(1.0, 20.0)], [5.0])  # wraps around x = 0: half of it outside the window
    found, table = instances.instance_map(scene, window_label(scene), IMAGE)
    assert found.max() == 1 and 0 < table[0]["visible_fraction"] < 1


def test_ids_must_match_the_particle_table(tmp_path):
    images = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[:, 2:5, 2:5] = 1
    maps = labels.astype(np.uint16)
    splits = {"train": [0], "val": [1], "test": []}
    table = {"particles/image": np.array([0, 1]), "particles/instance": np.array([1, 1])}
    path = tmp_path / "d.h5"
    data.write_dataset(path, images, labels, {"seed": np.zeros(2)}, splits, {}, {"instances": maps, **table})
    assert (data.read_instances(path, "val") == maps[1]).all()
    with h5py.File(path, "a") as f:
        f["instances"][1, 6, 6] = 3
    with pytest.raises(ValueError, match=r"d.h5: image 1: instance ids \[3\]"):
        data.read_instances(path, "val")
