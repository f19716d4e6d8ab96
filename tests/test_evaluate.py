"""evaluate_models on tiny synthetic domains with real (untrained) width-0.125 U-Nets."""

import json
import math

import pytest
import torch
from synthetic import disc_domain as make_domain
from synthetic import untrained_model as make_model

from emsim import data
from emsim.learning.evaluate import evaluate_models, read_evaluation, write_evaluation
from emsim.learning.metrics import METRICS, segmentation_metrics
from emsim.learning.models import load_model


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
