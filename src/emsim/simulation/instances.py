"""True particle instances of simulated images: which particle of the scene each labelled pixel shows.

The binary label of a scene (:mod:`emsim.simulation.labels`) is split among its particles by the
scene itself, not by connected components: each particle atom belongs to the particle whose
centre is nearest in projection (periodic in x/y), and each labelled pixel to the particle whose
projected atoms are nearest (Euclidean distance transform over the padded cell, at the image pixel
size). Touching particles therefore stay apart, and a particle keeps its identity where its label
is cut into pieces. Instance ``k`` (1-based) is the scene's particle ``k - 1``; 0 = background.

Per particle the table records its instance, lattice, radius [A], the equivalent diameter 2 sqrt(area / pi)
of its labelled pixels inside the image window [nm] and the fraction of its projected atoms that
lie inside the window (1 = wholly in view).
Arrays are indexed ``[x, y]`` like the labels (abTEM's convention).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from emsim.simulation import optics
from emsim.simulation.structures import Scene
from emsim.study.settings import Image

TABLE_FIELDS = ("instance", "lattice", "radius_A", "diameter_nm", "visible_fraction")


def atom_owners(scene: Scene) -> np.ndarray:
    """The particle (0-based) each particle atom of ``scene`` belongs to: its nearest centre in x/y, periodic."""
    positions = scene.positions_A[scene.is_particle][:, :2].astype(np.float64)
    centres = np.asarray(scene.info["centres_A"], np.float64).reshape(-1, 3)[:, :2]
    if not len(centres):
        return np.zeros(len(positions), np.int64)
    offset = positions[:, None, :] - centres[None]
    offset -= scene.cell_A[0] * np.round(offset / scene.cell_A[0])
    return np.argmin(np.square(offset).sum(axis=-1), axis=1)


def instance_map(scene: Scene, label: np.ndarray, image: Image) -> tuple[np.ndarray, list[dict]]:
    """Instances (size_px, size_px) uint16 of one scene's label (the image window's) and its particle table."""
    cell_px = optics.cell_px(image)
    owners = atom_owners(scene)
    pixels = np.floor(scene.positions_A[scene.is_particle][:, :2] / image.pixel_size_A).astype(np.int64) % cell_px
    n = int(scene.info["n_particles"])
    start = (cell_px - image.size_px) // 2
    inside = ((pixels >= start) & (pixels < start + image.size_px)).all(axis=1)
    distances = np.full((n, image.size_px, image.size_px), np.inf, np.float32)
    for k in range(n):
        seeds = np.ones((cell_px, cell_px), bool)
        seeds[pixels[owners == k, 0], pixels[owners == k, 1]] = False
        if not seeds.all():
            distances[k] = optics.crop_window(ndimage.distance_transform_edt(seeds), image.size_px)
    instances = np.zeros(label.shape, np.uint16)
    if n:
        instances[label > 0] = (np.argmin(distances, axis=0) + 1)[label > 0]
    areas = np.bincount(instances.ravel(), minlength=n + 1)[1:]
    table = [
        {
            "instance": k + 1,
            "lattice": str(scene.info["lattice"]),
            "radius_A": float(scene.info["radii_A"][k]),
            "diameter_nm": float(2 * np.sqrt(areas[k] / np.pi) * image.pixel_size_A / 10),
            "visible_fraction": float(inside[owners == k].mean()) if (owners == k).any() else 0.0,
        }
        for k in range(n)
    ]
    return instances, table
