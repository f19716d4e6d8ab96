"""A domain's dataset: images derived from a structure set's cached exit waves by the domain's shifts.

No multislice happens here: each image is the cached exit wave of one structure, through the
domain's optics shifts (one CTF, defocus measured from the structure's calibrated zero defocus
when the set is calibrated), intensity averaged over phonon configurations, downsampling, its
detector shifts (dose, blur, ...) in order, and last the cut of the image window from the padded
cell. Each label is split into its scene's particles (``instances``, with a ``particles`` table).
Image ``i`` draws from
``numpy.random.default_rng([domain_seed, i])``, so images are independent of each other and of
the shard layout.

A domain whose ``structure_set`` is a mapping ``{set: proportion}`` (a mixture) takes image ``i``
from structure ``i`` of the set :func:`mixture_sets` assigns to it: each split holds the proportions
(largest remainder), in a seeded random order. Sets that differ only in their support share their
particles, so a mixture over supports shows the same particles on different supports.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from emsim import data, extensions, io
from emsim.simulation import instances, optics, shifts, structures
from emsim.simulation.simulate import ShardWaves
from emsim.study.settings import Image, Microscope

log = logging.getLogger(__name__)


def render_image(waves: ShardWaves, index: int, domain: dict, microscope: Microscope, image_cfg: Image, rng):
    """One image of structure ``index`` of a shard under a domain's shifts; returns (image, metadata)."""
    zero_defocus_A = float(waves.zero_defocus_A[index])
    zero_defocus_A = zero_defocus_A if np.isfinite(zero_defocus_A) else 0.0
    context = {"pixel_size_A": image_cfg.pixel_size_A, "zero_defocus_A": zero_defocus_A}
    aberrations: dict = {"C30_A": microscope.Cs_A}
    metadata: dict = {"zero_defocus_A": zero_defocus_A}
    for kind, kind_params in shifts.ordered(domain, "optics"):
        aberrations, values = kind.apply(aberrations, kind_params, rng, context)
        metadata |= values
    aberrations.setdefault("C10_A", -zero_defocus_A)  # no defocus shift: at the calibrated zero defocus
    image = optics.image_from_waves(
        waves.waves[index],
        waves.sampling_A,
        optics.Aberrations(**aberrations),
        microscope,
        image_cfg.pixel_size_A,
        optics.cell_px(image_cfg),
        image_cfg.downsample,
    )
    for kind, kind_params in shifts.ordered(domain, "detector"):
        image, values = kind.apply(image, kind_params, rng, context)
        metadata |= values
    return np.asarray(optics.crop_window(image, image_cfg.size_px), np.float32), metadata


def mixture_sets(structure_set: str | dict, splits: dict, seed: int) -> list[str]:
    """The structure set of each image of a domain (train, val, test in order): one set, or a mixture
    ``{set: proportion}`` split in proportion within each split (largest remainder, ties to the
    set first in name order) and shuffled with ``default_rng([seed, n_images, 1511])``."""
    n_images = sum(splits.values())
    if isinstance(structure_set, str):
        return [structure_set] * n_images
    names = sorted(structure_set)
    weights = np.array([structure_set[n] for n in names], float)
    rng = np.random.default_rng([seed, n_images, 1511])
    assigned = []
    for split in data.SPLITS:
        exact = weights / weights.sum() * splits[split]
        counts = np.floor(exact).astype(int)
        counts[np.argsort(-(exact - counts), kind="stable")[: splits[split] - counts.sum()]] += 1
        assigned += list(rng.permutation(np.repeat(names, counts)))
    return [str(name) for name in assigned]


def _scene_shards(scene_paths: list, default_set: str | None) -> dict[tuple[str, int], tuple[int, int]]:
    """(structure set, structure index) -> (position in ``scene_paths``, index in that shard), from each
    file's ``structure_set`` attribute (else ``default_set``) and its scenes' recorded indices."""
    where = {}
    for number, path in enumerate(scene_paths):
        with io.reading(path, "scenes file"), h5py.File(path, "r") as f:
            name = json.loads(f.attrs["structure_set"]) if "structure_set" in f.attrs else default_set
            indices = [json.loads(info)["index"] for info in f["info"].asstr()[:]]
        if name is None:
            raise ValueError(f"{path}: a mixture domain needs the scenes file's structure_set attribute")
        where |= {(name, index): (number, local) for local, index in enumerate(indices)}
    return where


def build_domain_dataset(
    params: dict, shard_paths: list[str | Path], scene_paths: list[str | Path], out: str | Path
) -> None:
    """Render every image of a domain from its structure sets' exit-wave shards, split each label
    into the particles of its scene (``scene_paths``, the same shards' scenes,
    :mod:`emsim.simulation.instances`) and write the dataset (``params``:
    :func:`emsim.study.config.domain_slice`, recorded in the file)."""
    if len(scene_paths) != len(shard_paths):
        raise ValueError(f"{params['name']}: {len(shard_paths)} exit-wave shards but {len(scene_paths)} scene shards")
    for path in params.get("extensions", []):
        extensions.load(path)
    domain, seed, splits = params["domain"], params["seed"], params["splits"]
    microscope, image_cfg = Microscope.from_dict(params["microscope"]), Image.from_dict(params["image"])
    sets = mixture_sets(domain["structure_set"], splits, seed)
    single = domain["structure_set"] if isinstance(domain["structure_set"], str) else None
    where = _scene_shards(scene_paths, single)
    loaded: dict[str, tuple] = {}  # set -> (shard number, waves, scenes): one shard per set in memory
    images, labels, instance_maps, rows, table = [], [], [], [], []
    for index, name in enumerate(sets):
        if (name, index) not in where:
            break
        number, local = where[(name, index)]
        if loaded.get(name, (None,))[0] != number:
            loaded[name] = (number, ShardWaves.load(shard_paths[number]), structures.load_scenes(scene_paths[number]))
        _, shard, scenes = loaded[name]
        rng = np.random.default_rng([seed, index])
        image, metadata = render_image(shard, local, domain, microscope, image_cfg, rng)
        images.append(image)
        labels.append(shard.labels[local])
        found, particles = instances.instance_map(scenes[local], shard.labels[local], image_cfg)
        instance_maps.append(found)
        table += [{"image": index, **particle} for particle in particles]
        mixture = {"structure_set": np.bytes_(name)} if isinstance(domain["structure_set"], dict) else {}
        rows.append({"structure_index": index, "seed": seed, **metadata} | mixture)
        if (index + 1) % 64 == 0:
            log.info("%s: %d/%d images", params["name"], index + 1, len(sets))
    if len(images) < len(sets):
        raise ValueError(f"{params['name']}: the structure sets have {len(images)} structures, splits need {len(sets)}")
    bounds = np.cumsum([0, splits["train"], splits["val"], splits["test"]])
    split_index = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(data.SPLITS)}
    meta = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    attrs = {
        "domain": params["name"],
        "config": params,
        "sweep": domain.get("sweep", {}),
        "provenance": io.provenance(params),
    }
    extra = {"instances": np.stack(instance_maps)}
    columns = {key: np.array([p[key] for p in table]) for key in ("image", *instances.TABLE_FIELDS)}
    extra |= {f"particles/{key}": v.astype("S") if v.dtype.kind == "U" else v for key, v in columns.items()}
    data.write_dataset(out, np.stack(images), np.stack(labels), meta, split_index, attrs, extra)
