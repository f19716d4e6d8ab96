"""Micrograph domains: files resolved at load, datasets tiled and split by file, every bad input named."""

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from micrograph_files import REAL, REAL_REASON, write_micrographs
from PIL import Image

from emsim import data, micrograph_dataset, micrographs
from emsim.study import config, experiments

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "config/test.yaml").read_text())


def study_with(tmp_path: Path, **domains) -> dict:
    """The tiny study with micrograph domains added to its series (evaluation only)."""
    study = copy.deepcopy(TINY)
    study["domains"].update({name: {"micrographs": spec} for name, spec in domains.items()})
    study["experiments"]["defocus"]["domains"] = ["df*", *domains]
    return study


def build(tmp_path: Path, name: str, study: dict) -> Path:
    loaded = config.load(study, base_dir=tmp_path)
    out = tmp_path / f"{name}.h5"
    micrograph_dataset.build_dataset(config.domain_slice(loaded, name), out)
    return out


@pytest.fixture
def files(tmp_path):
    write_micrographs(tmp_path, ["a", "b", "c", "d", "e"])
    return tmp_path


def test_labelled_domain_is_tiled_resampled_and_split_by_file(files):
    spec = {"images": "images/*.png", "labels": "masks/{stem}.png", "pixel_size_A": 0.5}
    spec["splits"] = {"train": 0.6, "val": 0.2, "test": 0.2}
    path = build(files, "lab", study_with(files, lab=spec))
    attrs, meta = data.read_attrs(path), data.read_meta(path)
    assert attrs["label_kind"] == "mask"
    assert [f["split"] for f in attrs["files"]].count("train") == 3
    for entry in attrs["files"]:  # 160 px at 0.5 A -> 200 px at the study's 0.4 A
        assert entry["shape"] == [1, 200, 200]
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
    # 64 px tiles at stride 48 (overlap 0.25), the last moved to end at 200: 0, 48, 96, 136
    assert sorted(set(meta["tile_x0"])) == [0, 48, 96, 136]
    seen = {}
    for split in data.SPLITS:
        files_of_split = set(meta["file"][data.split_indices(path, split)])
        assert all(seen.setdefault(f, split) == split for f in files_of_split), "a file's tiles straddle splits"
        assert files_of_split == {i for i, f in enumerate(attrs["files"]) if f["split"] == split}
    images, labels = data.read_split(path, "train")
    assert images.shape == (3 * 16, 64, 64) and set(np.unique(labels)) == {0, 1}
    # labels follow the particles: dark pixels are labelled
    assert images[labels == 1].mean() < images[labels == 0].mean() - 30


def test_boxes_are_scaled_to_the_resampled_pixels(files):
    spec = {"images": "images/*.png", "boxes": "boxes/{stem}.txt", "pixel_size_A": 0.5}
    path = build(files, "box", study_with(files, box=spec))
    boxes = data.read_boxes(path)
    assert data.label_kind(path) == "boxes" and boxes.shape == (5 * 6, 6)
    cx, cy, w, h = np.loadtxt(files / "boxes" / "a.txt")[0, 1:]
    first = boxes[boxes[:, 0] == 0][0]
    assert np.allclose(first[2:], [(cx - w / 2) * 200, (cy - h / 2) * 200, (cx + w / 2) * 200, (cy + h / 2) * 200])
    assert data.read_split(path, "train")[0].shape[0] == 0  # evaluation only: every file in val by default


def test_unlabelled_domain_reads_file_pixel_size(tmp_path):
    from dm_writer import write_dm

    write_dm(tmp_path / "frame.dm4", np.random.default_rng(0).normal(size=(100, 100)).astype(np.float32), 0.05, "nm")
    path = build(tmp_path, "unl", study_with(tmp_path, unl={"images": "*.dm4"}))
    assert data.read_attrs(path)["files"][0]["pixel_size_A"] == pytest.approx(0.5)
    assert data.label_kind(path) == "none"


def test_split_counts_cut_by_largest_remainder():
    assert micrographs.split_counts({"train": 0.6, "val": 0.2, "test": 0.2}, 6) == {"train": 4, "val": 1, "test": 1}
    assert micrographs.split_counts({"train": 0, "val": 1, "test": 0}, 3) == {"train": 0, "val": 3, "test": 0}
    assert micrographs.split_counts({"train": 1, "val": 1, "test": 1}, 2) == {"train": 1, "val": 1, "test": 0}
    splits = micrographs.file_splits(10, {"train": 0.5, "val": 0.3, "test": 0.2}, seed=4)
    assert splits == micrographs.file_splits(10, {"train": 0.5, "val": 0.3, "test": 0.2}, seed=4)
    assert [splits.count(s) for s in data.SPLITS] == [5, 3, 2]


def test_tile_starts_cover_every_pixel():
    for length in (64, 65, 100, 200, 257):
        starts = micrograph_dataset.tile_starts(length, 64, 0.25)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start : start + 64] = True
        assert covered.all() and starts[-1] == length - 64 and starts == sorted(set(starts))
    with pytest.raises(ValueError, match="less than one 64 px tile"):
        micrograph_dataset.tile_starts(63, 64, 0.25)


def test_micrograph_domains_are_evaluation_or_training_domains_by_their_labels(files):
    study = study_with(
        files,
        lab={
            "images": "images/*.png",
            "labels": "masks/{stem}.png",
            "pixel_size_A": 0.5,
            "splits": {"train": 3, "val": 1, "test": 1},
        },
        box={"images": "images/*.png", "boxes": "boxes/{stem}.txt", "pixel_size_A": 0.5},
        unl={"images": "images/*.png", "pixel_size_A": 0.5},
    )
    loaded = config.load(study, base_dir=files)
    exp = experiments.expand(loaded)["defocus"]
    targets = {m.tags["target"] for m in exp.models if m.stage == "transfer"}
    assert targets == {"df10", "lab"}, "boxes and unlabelled domains are evaluated, not trained on"
    assert exp.domains == ["df-10", "df10", "lab", "box", "unl"]
    for kind in ("box", "unl"):
        bad = copy.deepcopy(study)
        bad["experiments"]["defocus"]["targets"] = [kind]
        with pytest.raises(config.ConfigError, match=rf"experiments.defocus.targets: domain '{kind}' has"):
            config.load(bad, base_dir=files)
    adapt = copy.deepcopy(study)  # adabn alone adapts to unlabelled images: it needs train files
    adapt["experiments"]["defocus"] |= {"targets": ["unl"], "methods": ["adabn"]}
    del adapt["experiments"]["defocus"]["baseline"]
    with pytest.raises(config.ConfigError, match=r"domains.unl.micrographs.splits: no file .* train split"):
        config.load(adapt, base_dir=files)
    adapt["domains"]["unl"]["micrographs"]["splits"] = {"train": 3, "val": 2}
    assert {m.tags["target"] for m in experiments.expand(config.load(adapt, base_dir=files))["defocus"].models} == {
        "df-10",
        "unl",
    }
    bad = copy.deepcopy(study)
    bad["experiments"]["defocus"]["sources"] = ["box"]
    with pytest.raises(config.ConfigError, match="experiments.defocus.sources: domain 'box' has only boxes"):
        config.load(bad, base_dir=files)
    bad = copy.deepcopy(study)
    bad["domains"]["lab"]["micrographs"]["splits"] = {"train": 1, "val": 0, "test": 0}
    with pytest.raises(config.ConfigError, match=r"domains.lab.micrographs.splits: no file .* val split"):
        config.load(bad, base_dir=files)


@pytest.mark.parametrize(
    "spec, change, message",
    [
        ({"images": "nothing/*.png"}, None, r"domains.m.micrographs.images: 'nothing/\*.png' matches no file"),
        (
            {"images": "images/*.png", "labels": "masks/{stem}.png"},
            "rm masks/c.png",
            r"images/c.png has no labels file \S*masks/c.png",
        ),
        (
            {"images": "images/*.png", "boxes": "boxes/{stem}.txt"},
            "rm images/c.png",
            r"boxes/c.txt has no image of its stem beside",
        ),
        ({"images": "images/*.png", "labels": "masks/x.png"}, None, r"labels: 'masks/x.png' has no '\{stem\}'"),
        ({"images": "images/*.png", "labels": "masks/{stem}.png", "boxes": "boxes/{stem}.txt"}, None, "not both"),
        ({"images": "images/*.png", "splits": {"train": 0, "val": 0, "test": 0}}, None, "fractions sum to 0"),
        ({"images": "images/*.png", "pixel_size_A": -1}, None, "domains.m.micrographs.pixel_size_A"),
        ({"images": "images/*.png", "stray": 1}, None, "domains.m.micrographs: Additional properties"),
    ],
)
def test_bad_micrograph_config_names_key_and_file(files, spec, change, message):
    if change:
        (files / change.split()[1]).unlink()
    with pytest.raises(config.ConfigError, match=message):
        config.load(study_with(files, m=spec), base_dir=files)


def _mask_shape(folder):
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(folder / "masks" / "b.png")


def _mask_grey(folder):
    Image.fromarray(np.arange(160 * 160).reshape(160, 160).astype(np.uint8)).save(folder / "masks" / "b.png")


def _box_outside(folder):
    (folder / "boxes" / "b.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.98 0.5 0.1 0.1\n")


def _box_malformed(folder):
    (folder / "boxes" / "b.txt").write_text("0 0.5 0.5 0.1\n")


def _corrupt(folder):
    (folder / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")


@pytest.mark.parametrize(
    "kind, damage, spec_change, message",
    [
        (
            "labels",
            _mask_shape,
            {},
            r"masks/b.png: mask of shape \(1, 100, 100\) does not match its image's \(1, 160, 160\)",
        ),
        ("labels", _mask_grey, {}, r"masks/b.png: mask is not binary \(256 grey levels"),
        ("boxes", _box_outside, {}, r"boxes/b.txt:2: box .* lies outside the image"),
        ("boxes", _box_malformed, {}, r"boxes/b.txt:1: expected 'class cx cy w h'"),
        ("boxes", _corrupt, {}, r"images/b.png: cannot be read"),
        (
            "labels",
            None,
            {"pixel_size_A": "auto"},
            r"images/a.png: records no pixel size and domains.m.micrographs.pixel_size_A is auto",
        ),
        (
            "labels",
            None,
            {"pixel_size_A": 2.0},
            r"images/a.png: its pixel size 2 Å is 5x .*micrographs.max_rescale = 4",
        ),
        (
            "labels",
            None,
            {"pixel_size_A": 0.1},
            r"images/a.png: 160x160 px at 0.1 Å is 40x40 px .* less than one image.size_px = 64 tile",
        ),
    ],
)
def test_bad_micrograph_files_fail_the_dataset_job_naming_the_file(files, kind, damage, spec_change, message):
    if damage:
        damage(files)
    spec = {
        "images": "images/*.png",
        kind: f"{'masks' if kind == 'labels' else 'boxes'}/{{stem}}.{'png' if kind == 'labels' else 'txt'}",
    }
    spec |= {"pixel_size_A": 0.5} | spec_change
    with pytest.raises(ValueError, match=message):
        build(files, "m", study_with(files, m=spec))
    assert not (files / "m.h5").exists(), "a failed job leaves no dataset"


@pytest.mark.skipif(not REAL.is_dir(), reason=REAL_REASON)
def test_real_box_labelled_micrographs(tmp_path):
    """The Pt-on-carbon JPEGs with their YOLO boxes (640 px images, pixel size given)."""
    for stem in ("PtCo1", "PtCo3"):
        for sub, suffix in (("images", "jpg"), ("boxes", "txt")):
            (tmp_path / "pt" / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(REAL / "pt_on_carbon" / sub / f"{stem}.{suffix}", tmp_path / "pt" / sub)
    spec = {"images": "pt/images/PtCo*.jpg", "boxes": "pt/boxes/{stem}.txt", "pixel_size_A": 0.5}
    study = study_with(tmp_path, pt=spec)
    study["image"] = {"size_px": 256, "pixel_size_A": 0.6, "padding_A": 4.8}
    study["simulation"]["sampling_A"] = 0.2
    path = build(tmp_path, "pt", study)
    attrs, boxes = data.read_attrs(path), data.read_boxes(path)
    assert [f["shape"] for f in attrs["files"]] == [[1, 533, 533]] * 2
    counts = [
        len((REAL / "pt_on_carbon/boxes" / f"{Path(f['path']).stem}.txt").read_text().splitlines())
        for f in attrs["files"]
    ]
    assert len(boxes) == sum(counts) and boxes[:, 2:].min() >= -1 and boxes[:, 2:].max() <= 534
    images, _ = data.read_split(path, "val")
    assert images.shape == (2 * 9, 256, 256) and np.isfinite(images).all() and images.std() > 1
