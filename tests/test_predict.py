"""predict_files with a width-0.125 U-Net trained for a few dozen steps on synthetic discs."""

import h5py
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from emsim.data import standardize
from emsim.models import UNet, save_model
from emsim.predict import predict_files
from test_evaluate import disc_images


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a.astype(bool) & b.astype(bool)).sum() / (a.astype(bool) | b.astype(bool)).sum()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """60 Adam steps (batch 4) on 32 images of dark discs: enough for IoU ~0.9."""
    images, labels = disc_images(np.random.default_rng(0), 32, 64, contrast=0.5, dose=40.0)
    x = torch.from_numpy(standardize(images))[:, None]
    y = torch.from_numpy(labels).long()
    model = UNet(width=0.125, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        batch = torch.randint(0, len(x), (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("model") / "discs.pt"
    save_model(path, model, meta={"stage": "pretrain"})
    return path


def test_round_trip_formats(model_path, tmp_path):
    images, labels = disc_images(np.random.default_rng(1), 3, 96, contrast=0.5, dose=40.0)
    tifffile.imwrite(tmp_path / "a.tif", images[0])
    Image.fromarray(images[1].astype(np.uint16)).save(tmp_path / "b.png")
    np.save(tmp_path / "c.npy", images[2])
    inputs = [tmp_path / n for n in ("a.tif", "b.png", "c.npy")]
    summary = predict_files(model_path, inputs, tmp_path / "out", device="cpu")
    assert [s["status"] for s in summary] == ["ok"] * 3
    for entry, label in zip(summary, labels):
        mask = np.load(entry["mask_npy"])
        assert mask.dtype == np.uint8 and mask.shape == (96, 96)
        assert iou(mask, label) > 0.7
        png = np.asarray(Image.open(entry["mask_png"]))
        assert set(np.unique(png)) <= {0, 255} and (png == mask * 255).all()
        overlay = np.asarray(Image.open(entry["overlay_png"]))
        assert overlay.shape == (96, 96, 3) and entry["shape_px"] == [96, 96]
        assert entry["particle_fraction"] == pytest.approx(mask.mean())
    assert summary[0]["mask_png"].endswith("a_mask.png") and summary[0]["index"] is None


def test_odd_size_and_tiling(model_path, tmp_path):
    images, labels = disc_images(np.random.default_rng(2), 1, 200, contrast=0.5, dose=40.0)
    odd = images[0, :70, :90]
    np.save(tmp_path / "odd.npy", odd)
    np.save(tmp_path / "big.npy", images[0])
    [small] = predict_files(model_path, [tmp_path / "odd.npy"], tmp_path / "out", device="cpu")
    assert np.load(small["mask_npy"]).shape == (70, 90)
    assert iou(np.load(small["mask_npy"]), labels[0, :70, :90]) > 0.7
    whole, = predict_files(model_path, [tmp_path / "big.npy"], tmp_path / "whole", device="cpu")
    tiled, = predict_files(model_path, [tmp_path / "big.npy"], tmp_path / "tiled", device="cpu",
                           tile_px=64)
    whole, tiled = np.load(whole["mask_npy"]), np.load(tiled["mask_npy"])
    assert whole.shape == tiled.shape == (200, 200)
    assert iou(tiled, labels[0]) > 0.7 and (whole == tiled).mean() > 0.98
    with pytest.raises(ValueError, match="tile_px"):
        predict_files(model_path, [], tmp_path, tile_px=48)


def test_stacks(model_path, tmp_path):
    images, labels = disc_images(np.random.default_rng(3), 3, 64, contrast=0.5, dose=40.0)
    tifffile.imwrite(tmp_path / "pages.tiff", images, photometric="minisblack")
    rgb = np.repeat(images[0, :, :, None], 3, axis=-1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    pages = predict_files(model_path, [tmp_path / "pages.tiff", tmp_path / "rgb.tif"],
                          tmp_path / "tiff", device="cpu")
    assert [(s["index"], s["status"]) for s in pages] == [(0, "ok"), (1, "ok"), (2, "ok"),
                                                          (None, "ok")]
    for entry, label in zip(pages, [*labels, labels[0]]):
        assert iou(np.load(entry["mask_npy"]), label) > 0.7
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f["images"] = images
        f["other"] = np.zeros((4, 4))
    with h5py.File(tmp_path / "single.hdf5", "w") as f:
        f["group/micrograph"] = images[0]
        f["attrs_like"] = np.arange(3)
    with h5py.File(tmp_path / "ambiguous.h5", "w") as f:
        f["x"] = images[0]
        f["y"] = images[1]
    inputs = [tmp_path / n for n in ("stack.h5", "single.hdf5", "ambiguous.h5")]
    summary = predict_files(model_path, inputs, tmp_path / "out", device="cpu")
    assert [(s["index"], s["status"]) for s in summary] == [
        (0, "ok"), (1, "ok"), (2, "ok"), (None, "ok"), (None, "error")]
    assert summary[2]["mask_npy"].endswith("stack_002_mask.npy")
    for entry, label in zip(summary[:3], labels):
        assert iou(np.load(entry["mask_npy"]), label) > 0.7
    assert "ambiguous.h5" in summary[4]["message"] and "x, y" in summary[4]["message"]


def test_bad_inputs_are_reported_and_others_processed(model_path, tmp_path):
    image = disc_images(np.random.default_rng(4), 1, 64, contrast=0.5, dose=40.0)[0][0]
    grey = np.clip(image * 4, 0, 255).astype(np.uint8)
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage" * 10)
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    colour = np.stack([grey, grey[::-1], grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.save(tmp_path / "complex.npy", image.astype(np.complex64))
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "grey_rgb.npy", grey)
    np.save(tmp_path / "sub" / "grey_rgb.npy", grey)
    names = ["corrupt.tif", "photo.jpg", "grey_rgb.png", "colour.png", "complex.npy", "nan.npy",
             "missing.npy", "grey_rgb.npy", "sub/grey_rgb.npy"]
    summary = predict_files(model_path, [tmp_path / n for n in names], tmp_path / "out",
                            device="cpu")
    status = {s["input"].removeprefix(str(tmp_path) + "/"): s for s in summary}
    for name in ("corrupt.tif", "photo.jpg", "colour.png", "complex.npy", "nan.npy",
                 "missing.npy"):
        assert status[name]["status"] == "error" and name in status[name]["message"], name
    assert "unsupported file type '.jpg'" in status["photo.jpg"]["message"]
    assert "differing channels" in status["colour.png"]["message"]
    assert status["grey_rgb.png"]["status"] == "ok"
    # same stem from three inputs: distinct outputs
    outputs = [status[n]["mask_npy"] for n in ("grey_rgb.png", "grey_rgb.npy", "sub/grey_rgb.npy")]
    assert len(set(outputs)) == 3 and outputs[2].endswith("grey_rgb-3_mask.npy")


def test_non_emsim_model_fails_before_inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((64, 64)))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt"):
        predict_files(tmp_path / "foreign.pt", [tmp_path / "x.npy"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
