"""Training stages on tiny synthetic domains (64 px, width 0.125, CPU)."""

import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from damage import flip_tensor_byte
from synthetic import CFG, LR
from synthetic import bright_disc_domain as make_domain

from emsim import data
from emsim.learning import evaluate, inputs, models, steps, train
from emsim.learning.metrics import STUDY_LOSS_OFFSET
from emsim.learning.models import load_model, save_model
from emsim.study import config, experiments, settings
from emsim.study.settings import Training


def test_pretraining_learns_easy_task_and_writes_model(disc_domains, tmp_path):
    out = tmp_path / "model.pt"
    meta = train.pretrain(disc_domains["a"], out, replace(CFG, epochs=6), LR, seed=3, size=12)
    history = meta["history"]
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert history[0]["val_loss"] > 0.6 > 2 * meta["best_val_loss"]  # ln 2 = 0.69: chance
    assert history[-1]["train_loss"] < 0.4 * history[0]["train_loss"]
    assert history[1]["lr"] == pytest.approx(LR * CFG.lr_decay)
    assert meta["best_val_loss"] == min(r["val_loss"] for r in history)
    assert meta["best_epoch"] == 1 + int(np.argmin([r["val_loss"] for r in history]))
    assert (meta["train_size"], meta["val_size"], meta["source_domain"]) == (12, 4, "a")
    assert meta["trainable_params"] == meta["total_params"]
    model, saved = load_model(out)
    assert saved["history"] == history and saved["config"]["lr"] == LR
    assert not (tmp_path / "model.pt.ckpt").exists()
    # the saved weights are the best-validation ones
    images, labels = data.read_split(disc_domains["a"], "val")
    x = torch.from_numpy(data.standardize(images)).unsqueeze(1)
    loss = steps.mean_loss(model, x, torch.from_numpy(labels), 4, False, False)
    assert loss == pytest.approx(meta["best_val_loss"], rel=1e-4)


def test_dihedral8_trains_every_image_in_all_8_symmetries_each_epoch(disc_domains, tmp_path):
    order, ops = steps.epoch_order(3, "pretrain", 1, 5, "dihedral8", torch.device("cpu"))
    assert sorted(zip(order.tolist(), ops.tolist())) == [(i, k) for i in range(5) for k in range(8)]
    again = steps.epoch_order(3, "pretrain", 1, 5, "dihedral8", torch.device("cpu"))
    other_epoch = steps.epoch_order(3, "pretrain", 2, 5, "dihedral8", torch.device("cpu"))
    assert torch.equal(order, again[0]) and not torch.equal(order, other_epoch[0])
    meta = train.pretrain(
        disc_domains["a"], tmp_path / "m.pt", replace(CFG, epochs=2, augmentation="dihedral8"), LR, seed=0, size=3
    )
    assert [r["images_seen"] for r in meta["history"]] == [24, 48]
    meta = train.pretrain(disc_domains["a"], tmp_path / "r.pt", replace(CFG, epochs=2), LR, seed=0, size=3)
    assert [r["images_seen"] for r in meta["history"]] == [3, 6]


def test_random_augmentation_draws_as_before_dihedral8_existed():
    """One symmetry per image, drawn after the permutation from the epoch's rng (the pre-9.4
    order of draws, so "random" keeps earlier results)."""
    order, ops = steps.epoch_order(3, "transfer", 4, 6, "random", torch.device("cpu"))
    rng = np.random.default_rng([3, 1, 4])
    expected_order = rng.permutation(6)
    per_image = rng.integers(0, 8, 6)
    assert order.tolist() == expected_order.tolist()
    assert ops.tolist() == per_image[expected_order].tolist()


@pytest.mark.parametrize("augmentation, size", [("random", None), ("dihedral8", 3)])
def test_interrupted_run_resumes_to_identical_weights(disc_domains, tmp_path, augmentation, size):
    cfg = replace(CFG, augmentation=augmentation)
    full = tmp_path / "full.pt"
    meta_full = train.pretrain(disc_domains["a"], full, cfg, LR, seed=5, size=size)

    class Killed(Exception):
        pass

    def kill_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Killed

    resumed = tmp_path / "resumed.pt"
    with pytest.raises(Killed):
        train.pretrain(disc_domains["a"], resumed, cfg, LR, seed=5, size=size, on_epoch_end=kill_after_first_epoch)
    assert not resumed.exists() and (tmp_path / "resumed.pt.ckpt").exists()
    epochs_run = []
    meta_resumed = train.pretrain(
        disc_domains["a"],
        resumed,
        cfg,
        LR,
        seed=5,
        size=size,
        on_epoch_end=lambda epoch, record: epochs_run.append(epoch),
    )
    assert epochs_run == [2, 3]
    assert not (tmp_path / "resumed.pt.ckpt").exists()
    a, b = load_model(full)[0].state_dict(), load_model(resumed)[0].state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in meta_full["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in meta_resumed["history"]]


def test_checkpoint_of_another_run_is_ignored(disc_domains, tmp_path, caplog):
    out = tmp_path / "m.pt"

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.pretrain(disc_domains["a"], out, replace(CFG, epochs=1), LR, seed=1, on_epoch_end=stop)
    epochs_run = []
    with caplog.at_level(logging.WARNING, logger="emsim.learning"):
        train.pretrain(
            disc_domains["a"],
            out,
            replace(CFG, epochs=1),
            LR,
            seed=2,
            on_epoch_end=lambda epoch, record: epochs_run.append(epoch),
        )
    assert epochs_run == [1] and "ignoring checkpoint" in caplog.text
    Path(f"{out}.ckpt").write_bytes(b"truncated")
    train.pretrain(disc_domains["a"], out, replace(CFG, epochs=1), LR, seed=2)
    assert "ignoring unreadable checkpoint" in caplog.text and not Path(f"{out}.ckpt").exists()


def test_checkpoint_of_changed_dataset_is_discarded(tmp_path, caplog):
    dataset = make_domain(tmp_path / "d.h5", "d", n_train=6, seed=1)
    out = tmp_path / "m.pt"

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.pretrain(dataset, out, CFG, LR, seed=1, on_epoch_end=stop)
    assert Path(f"{out}.ckpt").exists()
    make_domain(dataset, "d", n_train=6, seed=2)  # rebuilt: same path, sizes and domain
    epochs_run = []
    with caplog.at_level(logging.WARNING, logger="emsim.learning"):
        meta = train.pretrain(
            dataset, out, CFG, LR, seed=1, on_epoch_end=lambda epoch, record: epochs_run.append(epoch)
        )
    assert epochs_run == [1, 2, 3]
    assert f"discarded checkpoint {out}.ckpt: the content of input(s) {dataset} changed" in caplog.text
    fresh = tmp_path / "fresh.pt"
    assert train.pretrain(dataset, fresh, CFG, LR, seed=1)["inputs"] == meta["inputs"]
    a, b = load_model(out)[0].state_dict(), load_model(fresh)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_changed_pretrained_weights_is_discarded(disc_domains, pretrained, tmp_path, caplog):
    source = tmp_path / "source.pt"
    model, meta = load_model(pretrained[0])
    save_model(source, model, meta=meta)
    out = tmp_path / "t.pt"
    cfg = replace(CFG, epochs=2)

    def stop(epoch, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.transfer(source, disc_domains["b"], out, cfg, LR, 0, freeze="encoder", size=4, on_epoch_end=stop)
    with torch.no_grad():
        model.decoder.head.weight.add_(0.1)
    save_model(source, model, meta=meta)  # same meta, other weights
    with caplog.at_level(logging.WARNING, logger="emsim.learning"):
        train.transfer(source, disc_domains["b"], out, cfg, LR, 0, freeze="encoder", size=4)
    assert f"the content of input(s) {source} changed" in caplog.text


def test_same_seed_same_weights_other_seed_other_weights(disc_domains, tmp_path):
    states = []
    for i, seed in enumerate((7, 7, 8)):
        train.pretrain(disc_domains["a"], tmp_path / f"{i}.pt", replace(CFG, epochs=1), LR, seed=seed)
        states.append(load_model(tmp_path / f"{i}.pt")[0].state_dict())
    key = "encoder.conv1.weight"
    assert torch.equal(states[0][key], states[1][key])
    assert not torch.equal(states[0][key], states[2][key])


def test_divergence_raises(disc_domains, tmp_path):
    with pytest.raises(steps.TrainingDiverged, match=r"pretrain diverged at epoch \d+, step \d+"):
        train.pretrain(disc_domains["a"], tmp_path / "m.pt", CFG, 1e10, seed=0)
    assert not (tmp_path / "m.pt").exists()


def test_non_finite_images_are_rejected_before_training(disc_domains, tmp_path):
    images, labels = data.read_split(disc_domains["a"], "train")
    images[:] = np.nan
    splits = {"train": np.arange(16), "val": np.arange(16), "test": np.arange(16)}
    dataset = tmp_path / "nan.h5"
    data.write_dataset(dataset, images, labels, {"structure_index": np.arange(16)}, splits, {"domain": "nan"})
    with pytest.raises(ValueError, match=r"nan.h5: the train split has non-finite pixels"):
        train.pretrain(dataset, tmp_path / "m.pt", CFG, LR, seed=0)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    "part, frozen, trained",
    [("encoder", "encoder", ("decoder",)), ("decoder", "decoder.blocks", ("encoder", "decoder.head"))],
)
def test_transfer_freezes_one_part_and_trains_the_other(disc_domains, pretrained, tmp_path, part, frozen, trained):
    source, source_meta = pretrained
    out = tmp_path / "t.pt"
    meta = train.transfer(source, disc_domains["b"], out, replace(CFG, epochs=2), LR, 1, freeze=part, size=4)
    before, after = load_model(source)[0], load_model(out)[0]
    frozen_before = before.get_submodule(frozen).state_dict()  # includes BN running statistics
    frozen_after = after.get_submodule(frozen).state_dict()
    assert all(torch.equal(frozen_before[k], frozen_after[k]) for k in frozen_before)
    for name in trained:
        trained_before = before.get_submodule(name).state_dict()
        trained_after = after.get_submodule(name).state_dict()
        assert any(not torch.equal(trained_before[k], trained_after[k]) for k in trained_before)
    assert meta["trainable_params"] == sum(
        p.numel() for name in trained for p in after.get_submodule(name).parameters()
    )
    assert (meta["source_domain"], meta["target_domain"], meta["train_size"]) == ("a", "b", 4)
    assert meta["freeze"] == part
    assert meta["seeds"] == {"data": 1, "pretrain_init": 0, "pretrain_data": 0}
    assert meta["pretrained_best_val_loss"] == source_meta["best_val_loss"]


def test_transfer_without_freezing_changes_both_parts(disc_domains, pretrained, tmp_path):
    out = tmp_path / "t.pt"
    train.transfer(pretrained[0], disc_domains["b"], out, replace(CFG, epochs=1), LR, 1, freeze="none", size=6)
    before, after = load_model(pretrained[0])[0].state_dict(), load_model(out)[0].state_dict()
    for part in ("encoder.", "decoder."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part))


def test_transfer_rejects_bad_size_freeze_and_width(disc_domains, pretrained, tmp_path):
    with pytest.raises(ValueError, match="size = 7 .* 0..6"):
        train.transfer(pretrained[0], disc_domains["b"], tmp_path / "t.pt", CFG, LR, 0, freeze="encoder", size=7)
    with pytest.raises(ValueError, match="freeze part 'head'"):
        train.transfer(pretrained[0], disc_domains["b"], tmp_path / "t.pt", CFG, LR, 0, freeze="head", size=4)
    with pytest.raises(ValueError, match="width"):
        train.transfer(
            pretrained[0], disc_domains["b"], tmp_path / "t.pt", replace(CFG, width=0.25), LR, 0, freeze="none", size=4
        )


def test_baseline_mixes_train_splits_and_validates_on_both(disc_domains, tmp_path):
    meta = train.baseline(
        (disc_domains["a"], disc_domains["b"]), tmp_path / "b.pt", replace(CFG, epochs=1), LR, 0, mix=(5, 2)
    )
    assert (meta["train_size"], meta["val_size"], meta["mix"]) == (7, 4 + 3, [5, 2])
    assert meta["domains"] == ["a", "b"]
    assert (meta["target_domain"], meta["source_domain"]) == ("a", "b")
    with pytest.raises(ValueError, match="mix = 17 .* 0..16"):
        train.baseline((disc_domains["a"], disc_domains["b"]), tmp_path / "c.pt", CFG, LR, 0, mix=(17, 1))
    with pytest.raises(ValueError, match="mix = 7 .* 0..6"):
        train.baseline((disc_domains["a"], disc_domains["b"]), tmp_path / "c.pt", CFG, LR, 0, mix=(1, 7))


def test_cfg_is_validated():
    with pytest.raises(ValueError, match="unknown key.*training.epoch\\b"):
        Training.from_dict({**asdict(CFG), "epoch": 3})
    with pytest.raises(ValueError, match="missing key.*training.lr_decay"):
        Training.from_dict({k: v for k, v in asdict(CFG).items() if k != "lr_decay"})
    assert Training.with_defaults().batch_size == 16


def test_dihedral_gives_the_8_symmetries_and_matches_labels():
    x = torch.arange(16.0).reshape(1, 4, 4).expand(8, 4, 4)
    out = steps.dihedral(x, torch.arange(8))
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(out[0], x[0]) and torch.equal(out[4], x[0].T)
    assert torch.equal(out[3], x[0].flip(0).flip(1))
    labels = (x > 7).to(torch.uint8)
    assert torch.equal(steps.dihedral(labels, torch.arange(8)), (out > 7).to(torch.uint8))


def test_baseline_meta_agrees_with_its_grid_tags(disc_domains, tmp_path):
    study = replace(
        config.load("config/test.yaml"),
        domains={name: settings.Domain.from_dict({"structure_set": "au"}) for name in ("a", "b")},
        training=replace(CFG, epochs=1),
        experiments={
            "x": settings.Experiment.with_defaults(
                domains=["a", "b"], sources=["b"], transfer_sizes=[4], baseline={"mixtures": [[5, 2]], "lrs": [2e-3]}
            )
        },
    )
    [spec] = [m for m in experiments.expand(study)["x"].models if m.stage == "baseline"]
    paths = {experiments.dataset_path(name): disc_domains[name] for name in ("a", "b")}
    meta = train.baseline(
        [paths[p] for p in spec.datasets], tmp_path / "b.pt", replace(CFG, epochs=1), spec.lr, spec.seed, mix=spec.mix
    )
    assert (meta["target_domain"], meta["source_domain"]) == (spec.tags["target"], spec.tags["source"])
    assert spec.tags["size"] == spec.mix[0] == 5
    assert spec.tags["lr_baseline"] == meta["config"]["lr"] == 2e-3
    assert spec.tags["lr_pretrain"] is None and spec.tags["lr_transfer"] is None


def test_softmax_cross_entropy_trains_and_selects_on_the_study_loss(disc_domains, tmp_path):
    cfg = replace(CFG, epochs=2, loss="softmax_cross_entropy")
    meta = train.pretrain(disc_domains["a"], tmp_path / "m.pt", cfg, LR, seed=0, size=8)
    history = meta["history"]
    assert all(0 < r["train_loss"] < 1 and 0 < r["val_loss"] < 1 for r in history)
    assert meta["best_val_loss"] == min(r["val_loss"] for r in history)
    model = load_model(tmp_path / "m.pt")[0]
    val = evaluate.load_split(disc_domains["a"], "val", torch.device("cpu"))
    assert evaluate.score(model, *val)["study_loss"] == pytest.approx(meta["best_val_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="training.loss: 'dice' is not one of"):
        Training.with_defaults(loss="dice")
    with pytest.raises(ValueError, match="training.augmentation: 'none' is not one of"):
        Training.from_dict({**asdict(CFG), "augmentation": "none"})
    assert STUDY_LOSS_OFFSET == pytest.approx(math.log(1 + math.exp(-1)))


def test_damaged_checkpoint_is_discarded_and_the_run_restarts_cleanly(disc_domains, tmp_path, caplog):
    clean = tmp_path / "clean.pt"
    train.pretrain(disc_domains["a"], clean, CFG, LR, seed=3)
    out = tmp_path / "m.pt"

    def stop(epoch, record):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.pretrain(disc_domains["a"], out, CFG, LR, seed=3, on_epoch_end=stop)
    flip_tensor_byte(Path(f"{out}.ckpt"), member=3)
    epochs_run = []
    with caplog.at_level(logging.WARNING, logger="emsim.learning"):
        train.pretrain(
            disc_domains["a"], out, CFG, LR, seed=3, on_epoch_end=lambda epoch, record: epochs_run.append(epoch)
        )
    assert epochs_run == [1, 2, 3]
    assert f"discarded damaged checkpoint: checkpoint {out}.ckpt is damaged" in caplog.text
    a, b = load_model(clean)[0].state_dict(), load_model(out)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["flipped byte", "nan weights"])
def test_damaged_finished_model_is_retrained_and_refused_by_readers(disc_domains, tmp_path, caplog, damage):
    out = tmp_path / "m.pt"
    train.pretrain(disc_domains["a"], out, CFG, LR, seed=4)
    clean = load_model(out)[0].state_dict()
    if damage == "flipped byte":
        flip_tensor_byte(out, member=1)
    else:
        payload = torch.load(out, weights_only=True)
        first = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
        payload["state_dict"][first][0] = float("nan")
        payload["state_sha256"] = models.state_digest(payload["state_dict"])  # a sound file of NaN weights
        torch.save(payload, out)
    with pytest.raises(ValueError, match=f"{out}"):
        load_model(out)
    epochs_run = []
    with caplog.at_level(logging.WARNING, logger="emsim.learning"), inputs.shared_inputs():  # a batch job
        train.pretrain(
            disc_domains["a"], out, CFG, LR, seed=4, on_epoch_end=lambda epoch, record: epochs_run.append(epoch)
        )
    assert epochs_run == [1, 2, 3] and f"retraining {out}" in caplog.text
    assert all(torch.equal(clean[k], v) for k, v in load_model(out)[0].state_dict().items())


def test_model_file_with_missing_or_misshaped_weights_names_the_file(disc_domains, tmp_path):
    out = tmp_path / "m.pt"
    train.pretrain(disc_domains["a"], out, replace(CFG, epochs=1), LR, seed=4)
    payload = torch.load(out, weights_only=True)
    name = next(iter(payload["state_dict"]))
    for change in ("missing", "misshaped"):
        state = dict(payload["state_dict"])
        if change == "missing":
            del state[name]
        else:
            state[name] = torch.zeros(3, 3)
        torch.save(payload | {"state_dict": state, "state_sha256": models.state_digest(state)}, out)
        with pytest.raises(ValueError, match=f"{out}: the weights do not fit"):
            load_model(out)


@pytest.mark.parametrize("width, on_cpu", [(0.125, False), (0.25, True)])
def test_default_memory_format_trains_256_px_images_on_the_cpu(tmp_path, width, on_cpu):
    """channels_last ``auto`` is on on the CPU only from width 0.25: torch 2.13's oneDNN backward
    crashes (SIGSEGV) in channels-last for narrower U-Nets (width 0.125 from 192 px), which killed
    a training job before the switch existed."""
    cfg = replace(CFG, width=width, epochs=1, batch_size=2, channels_last=Training.with_defaults().channels_last)
    assert cfg.channels_last == "auto"
    assert train._channels_last(cfg, torch.device("cpu")) is on_cpu
    assert train._channels_last(cfg, torch.device("cuda")) is True
    domain = make_domain(tmp_path / "big.h5", "big", n_train=2, n_val=2, size_px=256)
    meta = train.pretrain(domain, tmp_path / "big.pt", cfg, LR, seed=0)
    assert math.isfinite(meta["best_val_loss"])
