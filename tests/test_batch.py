"""Batches of models in one process (emsim.learning.batch) on the tiny synthetic domains of test_train."""

import json
import logging
from dataclasses import replace

import pytest
import torch
from synthetic import CFG

from emsim.learning import batch, train
from emsim.learning.models import FORMAT_VERSION, load_model

CFG_BATCH = replace(CFG, device="auto", epochs=2)


def transfers(pretrained_path, dataset, tmp_path, seeds=(0, 1), freezes=("encoder", "none")):
    return [
        {
            "path": str(tmp_path / f"{freeze}_seed{seed}.pt"),
            "stage": "transfer",
            "datasets": [str(dataset)],
            "lr": 1e-3,
            "seed": seed,
            "pretrained": str(pretrained_path),
            "freeze": freeze,
            "method": "finetune",
            "size": 4,
        }
        for freeze in freezes
        for seed in seeds
    ]


def weights(path):
    return load_model(path)[0].state_dict()


def same(a, b, atol=0.0):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0) for k in a)


def test_batch_gives_each_model_the_weights_it_gets_alone(disc_domains, pretrained, tmp_path):
    models = transfers(pretrained[0], disc_domains["b"], tmp_path / "batch")
    (tmp_path / "batch").mkdir()
    entries = batch.train_batch(models, CFG_BATCH, tmp_path / "record.json", device="cpu")
    assert [e["path"] for e in entries] == [m["path"] for m in models] and not any(e["kept"] for e in entries)
    record = json.loads((tmp_path / "record.json").read_text())
    assert len(record["models"]) == 4 and "provenance" in record
    alone = tmp_path / "alone.pt"
    spec = models[3]
    train.transfer(
        spec["pretrained"],
        spec["datasets"][0],
        alone,
        CFG_BATCH,
        spec["lr"],
        spec["seed"],
        freeze=spec["freeze"],
        size=4,
    )
    assert same(weights(alone), weights(spec["path"]))
    losses = [[(r["train_loss"], r["val_loss"]) for r in load_model(f)[1]["history"]] for f in (alone, spec["path"])]
    assert losses[0] == losses[1]


def test_rerun_keeps_finished_models_and_retrains_changed_or_old_ones(disc_domains, pretrained, tmp_path, caplog):
    models = transfers(pretrained[0], disc_domains["b"], tmp_path, seeds=(0,))
    batch.train_batch(models, CFG_BATCH, tmp_path / "r.json", device="cpu")
    stamp = {m["path"]: (tmp_path / m["path"]).stat().st_mtime_ns for m in models}
    added = transfers(pretrained[0], disc_domains["b"], tmp_path, seeds=(0, 1))  # a replicate added
    # an older model format: retrained, not reused
    payload = torch.load(models[0]["path"], weights_only=True)
    torch.save({**payload, "emsim_model": FORMAT_VERSION - 1}, models[0]["path"])
    with caplog.at_level(logging.INFO):
        entries = batch.train_batch(added, CFG_BATCH, tmp_path / "r.json", device="cpu")
    kept = {e["path"] for e in entries if e["kept"]}
    assert kept == {models[1]["path"]}, "only the unchanged current-format model is kept"
    assert (tmp_path / models[1]["path"]).stat().st_mtime_ns == stamp[models[1]["path"]]
    assert (
        f"retraining {models[0]['path']}: {models[0]['path']}: emsim model format {FORMAT_VERSION - 1} is not supported"
        in caplog.text
    )
    # another learning rate: the same file name no longer matches its run
    changed = [{**m, "lr": 2e-3} for m in added[:1]]
    assert not batch.train_batch(changed, CFG_BATCH, tmp_path / "r.json", device="cpu")[0]["kept"]


def test_a_diverging_model_fails_alone_and_the_batch_fails_at_the_end(disc_domains, pretrained, tmp_path):
    models = transfers(pretrained[0], disc_domains["b"], tmp_path, seeds=(0,))
    models[0]["lr"] = 1e10
    with pytest.raises(batch.BatchFailed, match=r"1 of 2 models failed:\n.*encoder_seed0.pt: transfer diverged"):
        batch.train_batch(models, CFG_BATCH, tmp_path / "r.json", device="cpu")
    assert (tmp_path / "none_seed0.pt").exists() and not (tmp_path / "encoder_seed0.pt").exists()
    assert not (tmp_path / "r.json").exists()


def test_batch_resumes_the_interrupted_model_exactly(disc_domains, pretrained, tmp_path, monkeypatch):
    models = transfers(pretrained[0], disc_domains["b"], tmp_path, seeds=(0,))
    fit = train._fit

    def killed_after_first_epoch(run, model, tr, val, out, training, lr, seed, device, on_epoch_end, *method):
        def kill(epoch, record):
            if str(out).endswith("none_seed0.pt"):
                raise KeyboardInterrupt

        return fit(run, model, tr, val, out, training, lr, seed, device, kill, *method)

    monkeypatch.setattr(train, "_fit", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        batch.train_batch(models, CFG_BATCH, tmp_path / "r.json", device="cpu")
    monkeypatch.setattr(train, "_fit", fit)
    assert (tmp_path / "encoder_seed0.pt").exists() and (tmp_path / "none_seed0.pt.ckpt").exists()
    entries = batch.train_batch(models, CFG_BATCH, tmp_path / "r.json", device="cpu")
    assert [e["kept"] for e in entries] == [True, False]
    alone = tmp_path / "alone.pt"
    train.transfer(pretrained[0], disc_domains["b"], alone, CFG_BATCH, 1e-3, 0, freeze="none", size=4)
    assert same(weights(alone), weights(tmp_path / "none_seed0.pt"))


def test_gpu_switches_on_cpu_bf16_compile_fused_stay_close_to_fp32_eager(disc_domains, pretrained, tmp_path):
    """bf16 autocast, torch.compile and fused Adam, each on the CPU: losses within 0.02 (absolute
    per-pixel cross-entropy, ~5 % of its value here) of the fp32 eager run."""
    models = transfers(pretrained[0], disc_domains["b"], tmp_path / "ref", seeds=(0,), freezes=("encoder",))
    (tmp_path / "ref").mkdir()
    batch.train_batch(models, CFG_BATCH, tmp_path / "ref.json", device="cpu")
    reference = load_model(models[0]["path"])[1]["history"]
    torch._dynamo.reset()
    for name, switch in (("bf16", {"amp": True}), ("fused", {"fused": True}), ("compile", {"compile": True})):
        (tmp_path / name).mkdir()
        specs = transfers(pretrained[0], disc_domains["b"], tmp_path / name, seeds=(0,), freezes=("encoder",))
        batch.train_batch(specs, replace(CFG_BATCH, **switch), tmp_path / f"{name}.json", device="cpu")
        history = load_model(specs[0]["path"])[1]["history"]
        for a, b in zip(reference, history):
            assert abs(a["train_loss"] - b["train_loss"]) < 0.02 and abs(a["val_loss"] - b["val_loss"]) < 0.02, name
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames > 0, "torch.compile must have run"
