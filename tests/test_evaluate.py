"""evaluate_models on tiny synthetic domains with real (untrained) width-0.125 U-Nets."""

import json
import math

import numpy as np
import pytest
import torch

from emsim import data
from emsim.learning.evaluate import evaluate_models, read_evaluation, write_evaluation
from emsim.learning.metrics import METRICS, segmentation_metrics
from emsim.learning.models import UNet, load_model, save_model


def disc_images(rng: np.random.Generator, n: int, size: int, contrast: float, dose: float):
    """Poisson images of 1-3 dark discs on a flat background, with their masks."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(8, size - 8, 2)
            labels[i] |= ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, 9) ** 2).astype(np.uint8)
    images = rng.poisson(dose * (1 - contrast * labels)).astype(np.float32)
    return images, labels


def make_domain(path, domain: str, seed: int, size: int = 64, contrast: float = 0.5, n: int = 6):
    rng = np.random.default_rng(seed)
    images, labels = disc_images(rng, n, size, contrast, dose=40.0)
    third = n // 3
    splits = {"train": np.arange(third), "val": np.arange(third, 2 * third), "test": np.arange(2 * third, n)[::-1]}
    data.write_dataset(
        path, images, labels, {"seed": np.full(n, seed)}, splits, {"domain": domain, "config": {"contrast": contrast}}
    )
    return str(path)


def make_model(path, seed: int, stage: str = "transfer") -> str:
    model = UNet(width=0.125, generator=torch.Generator().manual_seed(seed))
    history = [{"epoch": 1, "train_loss": 0.7, "val_loss": 0.69, "lr": 1e-3, "time_s": 0.1}]
    meta = {
        "stage": stage,
        "history": history,
        "best_epoch": 1,
        "best_val_loss": 0.69,
        "train_time_s": 0.1,
        "trainable_params": 100,
        "total_params": 200,
        "config": {"width": 0.125},
        "seeds": {"init": seed},
    }
    save_model(path, model, meta=meta)
    return str(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    datasets = {
        name: make_domain(root / f"{name}.h5", name, seed, contrast=c)
        for name, seed, c in [("a", 1, 0.5), ("b", 2, 0.3), ("c", 3, 0.1)]
    }
    models = [
        {
            "path": make_model(root / "pre.pt", 0, "pretrain"),
            "tags": {"stage": "pretrain", "source": "a", "target": "a", "pretrained": None},
        },
        {
            "path": make_model(root / "tr.pt", 1),
            "tags": {"stage": "transfer", "source": "a", "target": "b", "pretrained": str(root / "pre.pt")},
        },
    ]
    return datasets, models


def test_records_layout_and_values(study):
    datasets, models = study
    records = evaluate_models(models, datasets, device="cpu", batch_size=1)
    assert [r["path"] for r in records] == [m["path"] for m in models]
    pre, tr = records
    assert pre["tags"] == models[0]["tags"] and pre["stage"] == "pretrain"
    assert tr["best_epoch"] == 1 and tr["trainable_params"] == 100 and tr["seeds"] == {"init": 1}
    assert tr["history"][0]["val_loss"] == 0.69
    assert set(tr["metrics"]) == {"a", "b", "c"}
    assert set(tr["metrics"]["b"]) == {"val", "train", "test"}
    assert set(tr["metrics"]["a"]) == {"val"} and set(pre["metrics"]["a"]) == {"val", "train", "test"}
    assert set(tr["metrics"]["c"]["val"]) == set(METRICS)
    # same numbers as scoring the whole split in one batch by hand
    model, _ = load_model(models[1]["path"])
    for domain, split in [("c", "val"), ("b", "test")]:
        images, labels = data.read_split(datasets[domain], split)
        with torch.no_grad():
            logits = model(torch.from_numpy(data.standardize(images))[:, None])
        expected = segmentation_metrics(logits, torch.from_numpy(labels))
        assert tr["metrics"][domain][split] == pytest.approx(expected, rel=1e-5)


def test_each_val_split_read_once(study, monkeypatch):
    datasets, models = study
    calls = []
    read_split = data.read_split
    monkeypatch.setattr(data, "read_split", lambda p, s: calls.append((p, s)) or read_split(p, s))
    evaluate_models(models * 3, datasets, device="cpu")
    val_calls = [c for c in calls if c[1] == "val"]
    assert sorted(val_calls) == sorted((p, "val") for p in datasets.values())
    assert sorted(c for c in calls if c[1] != "val") == sorted(
        (datasets[t], s) for t in ("a", "b") for s in ("train", "test")
    )


def test_odd_image_size_is_padded(tmp_path):
    datasets = {"odd": make_domain(tmp_path / "odd.h5", "odd", 5, size=40)}
    path = make_model(tmp_path / "m.pt", 0)
    [record] = evaluate_models([{"path": path, "tags": {"target": "odd"}}], datasets, device="cpu")
    assert 0 <= record["metrics"]["odd"]["val"]["iou"] <= 1
    assert math.isfinite(record["metrics"]["odd"]["test"]["cross_entropy"])


def test_bad_inputs_fail_before_work(study, tmp_path):
    datasets, models = study
    with pytest.raises(ValueError, match="'z' is not one of"):
        evaluate_models([{"path": models[0]["path"], "tags": {"target": "z"}}], datasets)
    with pytest.raises(ValueError, match="missing.pt"):
        evaluate_models([{"path": str(tmp_path / "missing.pt"), "tags": {"target": "a"}}], datasets)
    with pytest.raises(ValueError, match="given as domain 'b'"):
        evaluate_models(models, {"a": datasets["a"], "b": datasets["c"]})
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt"):
        evaluate_models([{"path": str(not_a_model), "tags": {"target": "a"}}], datasets)


def test_json_round_trip_with_nan(study, tmp_path):
    datasets, models = study
    records = evaluate_models(models[:1], datasets, device="cpu")
    records[0]["metrics"]["a"]["val"]["iou"] = math.nan
    path = tmp_path / "out" / "evaluation.json"
    write_evaluation(records, path)
    document = json.loads(path.read_text())  # strict JSON: no NaN tokens
    assert document["format"] == "emsim-evaluation" and "provenance" in document
    back = read_evaluation(path)
    assert back[0]["metrics"]["a"]["val"]["iou"] is None
    assert back[0]["metrics"]["b"] == records[0]["metrics"]["b"]
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="other.json"):
        read_evaluation(tmp_path / "other.json")
