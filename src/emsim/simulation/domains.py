"""A domain's dataset: images derived from a structure set's cached exit waves by the domain's shifts.

No multislice happens here: each image is the cached exit wave of one structure, through the
domain's optics shifts (one CTF, defocus measured from the structure's calibrated zero defocus
when the set is calibrated), intensity averaged over phonon configurations, downsampling, its
detector shifts (dose, blur, ...) in order, and last the cut of the image window from the padded
cell. Each label is split into its scene's particles (``instances``, with a ``particles`` table).
Image ``i`` draws from
``numpy.random.default_rng([domain_seed, i])``, so images are independent of each other and of
the shard layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emsim import data, io
from emsim.simulation import instances, optics, shifts, structures
from emsim.simulation.simulate import ShardWaves
from emsim.study import config
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
    image = optics.image_from_waves(
        waves.waves[index],
        waves.sampling_A,
        optics.Aberrations(**aberrations),
        microscope,
        image_cfg.pixel_size_A,
        optics.cell_px(image_cfg),
    )
    for kind, kind_params in shifts.ordered(domain, "detector"):
        image, values = kind.apply(image, kind_params, rng, context)
        metadata |= values
    return np.asarray(optics.crop_window(image, image_cfg.size_px), np.float32), metadata


def build_domain_dataset(
    params: dict, shard_paths: list[str | Path], scene_paths: list[str | Path], out: str | Path
) -> None:
    """Render every image of a domain from its structure set's exit-wave shards, split each label
    into the particles of its scene (``scene_paths``, the same shards' scenes,
    :mod:`emsim.simulation.instances`) and write the dataset (``params``:
    :func:`emsim.study.config.domain_slice`, recorded in the file)."""
    if len(scene_paths) != len(shard_paths):
        raise ValueError(f"{params['name']}: {len(shard_paths)} exit-wave shards but {len(scene_paths)} scene shards")
    for path in params.get("extensions", []):
        config.load_extension(path)
    domain, seed, splits = params["domain"], params["seed"], params["splits"]
    microscope, image_cfg = Microscope.from_dict(params["microscope"]), Image.from_dict(params["image"])
    n_images = sum(splits.values())
    images, labels, instance_maps, rows, table = [], [], [], [], []
    for path, scene_path in zip(shard_paths, scene_paths):  # one shard's waves in memory at a time
        if len(images) == n_images:
            break
        shard, scenes = ShardWaves.load(path), structures.load_scenes(scene_path)
        for local in range(len(shard.labels)):
            index = len(images)
            if index == n_images:
                break
            rng = np.random.default_rng([seed, index])
            image, metadata = render_image(shard, local, domain, microscope, image_cfg, rng)
            images.append(image)
            labels.append(shard.labels[local])
            found, particles = instances.instance_map(scenes[local], shard.labels[local], image_cfg)
            instance_maps.append(found)
            table += [{"image": index, **particle} for particle in particles]
            rows.append({"structure_index": index, "seed": seed, **metadata})
        log.info("%s: %d/%d images", params["name"], len(images), n_images)
    if len(images) < n_images:
        raise ValueError(f"{params['name']}: the structure set has {len(images)} structures, splits need {n_images}")
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
