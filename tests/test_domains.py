"""A domain's dataset from cached exit waves: independent of the shard layout, calibrated per structure."""

import h5py
import numpy as np
import pytest

from emsim import data
from emsim.simulation import domains, optics, simulate, structures
from emsim.study import config

STUDY = {
    "microscope": {"energy_eV": 300e3, "focal_spread_A": 10.0},
    "simulation": {
        "sampling_A": 0.2,
        "slice_thickness_A": 4.0,
        "frozen_phonons": 1,
        "zero_defocus_search_A": [-100, 100],
    },
    "image": {"size_px": 32, "pixel_size_A": 0.4, "padding_A": 4.8},
    "structure_sets": {
        "au": {
            "n_structures": 3,
            "seed": 3,
            "particles": {"lattice": "Au_fcc", "radius_A": [4, 5], "min_gap_A": 2},
            "substrate": {"thickness_A": [6, 8]},
        }
    },
    "domains": {"df5": {"structure_set": "au", "defocus": {"mean_nm": 5, "sigma_nm": 1}, "dose": {"e_per_A2": 500}}},
    "splits": {"train": 1, "val": 1, "test": 1},
}


@pytest.fixture(scope="module")
def study():
    return config.load(STUDY)


def _dataset(study, shards: list[list[int]], directory) -> dict:
    directory.mkdir(exist_ok=True)
    spec, paths, scene_paths = config.scene_spec(study, "au"), [], []
    for k, indices in enumerate(shards):
        scenes = structures.build_structure_set(spec, optics.cell_A(study.image), indices)
        scene_paths.append(directory / f"scenes{k}.h5")
        structures.save_scenes(scene_paths[-1], scenes, {})
        shard = simulate.simulate_shard(
            scenes,
            indices,
            study.simulation,
            study.microscope.energy_eV,
            study.image,
            config.set_labels(study, "au"),
            seed=spec["seed"],
            microscope=study.microscope,
        )
        paths.append(directory / f"shard{k}.h5")
        shard.save(paths[-1], {"structure_set": "au"})
    out = directory / "df5.h5"
    domains.build_domain_dataset(config.domain_slice(study, "df5"), paths, scene_paths, out)
    images, labels = data.read_split(out, "train")
    found = data.read_instances(out, "train")
    return {"images": images, "labels": labels, "instances": found, **data.read_meta(out)}


def test_dataset_does_not_depend_on_the_shard_layout(study, tmp_path):
    a = _dataset(study, [[0, 1], [2]], tmp_path)
    b = _dataset(study, [[0], [1, 2]], tmp_path / "other")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    # every image carries its own structure's calibrated zero defocus
    zero = a["zero_defocus_A"]
    assert np.all(np.isfinite(zero)) and len(set(np.round(zero, 3))) > 1


def test_dataset_holds_each_labels_particles(study, tmp_path):
    a = _dataset(study, [[0, 1, 2]], tmp_path)
    assert ((a["instances"] > 0) == (a["labels"] > 0)).all() and a["instances"].max() >= 1
    with h5py.File(tmp_path / "df5.h5") as f:
        lattices = set(f["particles/lattice"][:].astype(str))
        diameters = f["particles/diameter_nm"][:]
    assert lattices == {"Au_fcc"} and (diameters >= 0).all() and 0.3 < diameters.max() <= 1.0  # radius 4-5 A


def test_mixture_domain_draws_each_split_in_proportion_with_shared_particles(tmp_path):
    sets = {"au": {}, "au_silica": {"kind": "silica", "thickness_A": [6, 8]}}
    splits = {"train": 2, "val": 2, "test": 2}
    raw = STUDY | {
        "structure_sets": {
            name: STUDY["structure_sets"]["au"] | {"n_structures": 6, "substrate": substrate}
            for name, substrate in sets.items()
        },
        "domains": {"mix": {"structure_set": {"au": 0.5, "au_silica": 0.5}, "dose": {"e_per_A2": 500}}},
        "splits": splits,
    }
    study = config.load(raw)
    waves, scene_paths, labels = [], [], {}
    for name in sets:
        spec = config.scene_spec(study, name)
        scenes = structures.build_structure_set(spec, optics.cell_A(study.image), range(6))
        scene_paths.append(tmp_path / f"{name}_scenes.h5")
        structures.save_scenes(scene_paths[-1], scenes, {"structure_set": name, "indices": list(range(6))})
        shard = simulate.simulate_shard(
            scenes,
            range(6),
            study.simulation,
            study.microscope.energy_eV,
            study.image,
            config.set_labels(study, name),
            seed=spec["seed"],
            microscope=study.microscope,
        )
        waves.append(tmp_path / f"{name}_waves.h5")
        shard.save(waves[-1], {"structure_set": name})
        labels[name] = shard.labels
    out = tmp_path / "mix.h5"
    domains.build_domain_dataset(config.domain_slice(study, "mix"), waves, scene_paths, out)
    drawn = list(data.read_meta(out)["structure_set"].astype(str))
    assert drawn == domains.mixture_sets({"au": 0.5, "au_silica": 0.5}, splits, study.seed)
    assert all(sorted(drawn[i : i + 2]) == ["au", "au_silica"] for i in (0, 2, 4))  # each split half and half
    mixed = np.concatenate([data.read_split(out, split)[1] for split in data.SPLITS])
    for i in range(6):  # image i shows structure i of its set: the same particles on either support
        assert np.array_equal(mixed[i], labels["au"][i]) and np.array_equal(mixed[i], labels["au_silica"][i])


def test_mixture_sets_split_by_largest_remainder():
    drawn = domains.mixture_sets({"a": 0.7, "b": 0.3}, {"train": 10, "val": 3, "test": 1}, seed=5)
    assert drawn[:10].count("a") == 7 and drawn[10:13].count("a") == 2 and drawn[13:] == ["a"]
    assert drawn == domains.mixture_sets({"b": 0.3, "a": 0.7}, {"train": 10, "val": 3, "test": 1}, seed=5)
    assert domains.mixture_sets("a", {"train": 2, "val": 1, "test": 0}, seed=5) == ["a"] * 3
