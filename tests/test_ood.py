"""The OOD score: model description at training, ranking of shifted domains, study calibration."""

import numpy as np
import pytest
import torch
from figure_content import check
from scipy import stats
from synthetic import disc_images

from emsim import data
from emsim.cli import main
from emsim.learning import evaluate, ood, ood_check, train
from emsim.learning.models import UNet, save_model
from emsim.study.settings import Training


def make_domain(path, domain: str, contrast: float, dose: float, n: int = 6) -> str:
    images, labels = disc_images(np.random.default_rng(len(domain)), n, 64, contrast, dose)
    splits = {"train": np.arange(2), "val": np.arange(2, 4), "test": np.arange(4, 6)}
    data.write_dataset(
        path,
        images,
        labels,
        {"structure_index": np.arange(n)},
        splits,
        {"domain": domain, "config": {"image": {"pixel_size_A": 0.4}}},
    )
    return str(path)


def test_score_grows_with_the_shift():
    rng = np.random.default_rng(0)
    train_images, _ = disc_images(rng, 16, 64, contrast=0.5, dose=40.0)
    ref = ood.reference(train_images, 0.4)
    assert ref["pixel_size_A"] == 0.4 and ref["size_px"] == 64
    scores = [
        np.mean([ood.score(image, ref) for image in disc_images(rng, 4, 64, 0.5, dose)[0]])
        for dose in (40.0, 10.0, 2.0)
    ]
    assert scores[0] < ood.DEFAULT_THRESHOLD and scores[0] < scores[1] < scores[2]
    big = np.tile(disc_images(rng, 1, 64, 0.5, 40.0)[0][0], (3, 4))  # tiled at training size
    assert ood.score(big, ref) < ood.DEFAULT_THRESHOLD


def test_training_records_the_description_and_study_ranks_domains(tmp_path, capsys):
    results = tmp_path / "results"
    near = make_domain(results / "datasets" / "near.h5", "near", 0.5, 40.0)
    make_domain(results / "datasets" / "mid.h5", "mid", 0.5, 8.0)
    make_domain(results / "datasets" / "far.h5", "far", 0.5, 1.0)
    path = results / "models" / "pretrain" / "near.pt"
    meta = train.pretrain(
        near, path, Training.with_defaults(width=0.125, epochs=1, batch_size=2, device="cpu"), 1e-3, seed=0
    )
    assert (
        meta["input_reference"]["pixel_size_A"] == 0.4
        and len(meta["input_reference"]["spectrum_mean"]) == ood.SPECTRUM_BINS
    )
    old = results / "models" / "old.pt"  # trained before the description existed
    save_model(
        old,
        UNet(width=0.125, generator=torch.Generator().manual_seed(1)),
        meta={"stage": "pretrain", "dataset": near, "size": None},
    )
    datasets = {d: str(results / "datasets" / f"{d}.h5") for d in ("near", "mid", "far")}
    records = evaluate.evaluate_models(
        [{"path": str(p), "tags": {"target": "near", "stage": "pretrain"}} for p in (path, old)], datasets, "cpu"
    )
    evaluate.write_evaluation(records, results / "evaluation" / "x" / "pretrain.json")
    found = ood_check.study_scores(results)
    assert len(found["pairs"]) == 6
    by_domain = found["domains"]
    assert by_domain["near"]["score"] < by_domain["mid"]["score"] < by_domain["far"]["score"]
    rho = stats.spearmanr([v["score"] for v in by_domain.values()], [v["loss"] for v in by_domain.values()])
    assert found["rho_domains"] == pytest.approx(rho.statistic)  # checked against scipy
    assert set(found["rho_per_model"]) == {str(path), str(old)}
    for model, value in found["rho_per_model"].items():
        mine = [p for p in found["pairs"] if p["model"] == model]
        assert value == pytest.approx(stats.spearmanr([p["score"] for p in mine], [p["loss"] for p in mine]).statistic)
    assert found["rho_median"] == pytest.approx(np.median(list(found["rho_per_model"].values())))
    own = np.mean([p["loss"] for p in found["pairs"] if p["domain"] == "near"])  # both models pretrained on near
    gaps = {p["domain"]: [] for p in found["pairs"]}
    for p in found["pairs"]:
        gaps[p["domain"]].append(p["shift_gap"])
    assert gaps["near"] == pytest.approx([p["loss"] - own for p in found["pairs"] if p["domain"] == "near"])
    assert gaps["mid"] == gaps["far"] == [None, None]  # no model pretrained on them
    assert found["rho_gap_median"] is None  # one gapped domain per model: nothing to rank
    assert main(["ood", str(results), "-o", str(tmp_path / "ood.json"), "--figure", str(tmp_path / "ood")]) == 0
    check([tmp_path / "ood.png", tmp_path / "ood.svg"], texts=("score",))
    assert "score vs shift gap" in capsys.readouterr().out and (tmp_path / "ood.json").exists()
    with pytest.raises(ValueError, match="no evaluation files"):
        ood_check.study_scores(tmp_path / "empty")


def test_calibrated_threshold_separates_degraded_pairs():
    pairs = [
        {"score": s, "loss": loss, "in_domain_loss": 0.1}
        for s, loss in [(1.0, 0.1), (2.0, 0.12), (3.0, 0.5), (4.0, 0.4), (1.5, 0.3)]
    ]
    assert ood_check._calibrate(pairs, 1.5) == pytest.approx(2.5)
    assert ood_check._calibrate(pairs[:2], 1.5) is None


def test_rank_correlation_per_model():
    pairs = [
        {"model": m, "score": s, "loss": loss}
        for m, rows in {"a": [(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)], "b": [(1.0, 0.3), (2.0, 0.2), (3.0, 0.1)]}.items()
        for s, loss in rows
    ]
    assert ood_check._rho_per_model(pairs, "loss") == pytest.approx({"a": 1.0, "b": -1.0})
    assert ood_check._median([1.0, None, 0.0]) == 0.5 and ood_check._median([None]) is None
