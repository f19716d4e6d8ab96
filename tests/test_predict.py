"""predict_files with a width-0.125 U-Net trained for a few dozen steps on synthetic discs."""

import csv
import json
import os
import struct
from pathlib import Path

import figure_content
import h5py
import numpy as np
import pytest
import tifffile
import torch
from dm_writer import write_dm
from PIL import Image
from scipy import ndimage
from synthetic import disc_images

from emsim.cli import main
from emsim.data import standardize
from emsim.learning import ood
from emsim.learning.models import UNet, save_model, state_digest
from emsim.predict import CSV_FIELDS, PARTICLE_FIELDS, entropy_bits, predict_files
from emsim.readers import read_images
from emsim.study.settings import Instances


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a.astype(bool) & b.astype(bool)).sum() / (a.astype(bool) | b.astype(bool)).sum()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """60 Adam steps (batch 4) on 32 images of dark discs: enough for IoU ~0.9."""
    return train_discs(tmp_path_factory.mktemp("model") / "discs.pt", seed=0)


def train_discs(path, seed: int, width: float = 0.125, meta: dict | None = None):
    images, labels = disc_images(np.random.default_rng(0), 32, 64, contrast=0.5, dose=40.0)
    x = torch.from_numpy(standardize(images))[:, None]
    y = torch.from_numpy(labels).long()
    model = UNet(width=width, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(60):
        batch = torch.randint(0, len(x), (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_model(path, model, meta={"stage": "pretrain", **(meta or {})})
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
        assert overlay.shape == (96, 96, 3) and (entry["height_px"], entry["width_px"]) == (96, 96)
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
    (whole,) = predict_files(model_path, [tmp_path / "big.npy"], tmp_path / "whole", device="cpu")
    (tiled,) = predict_files(model_path, [tmp_path / "big.npy"], tmp_path / "tiled", device="cpu", tile_px=64)
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
    pages = predict_files(model_path, [tmp_path / "pages.tiff", tmp_path / "rgb.tif"], tmp_path / "tiff", device="cpu")
    assert [(s["index"], s["status"]) for s in pages] == [(0, "ok"), (1, "ok"), (2, "ok"), (None, "ok")]
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
        (0, "ok"),
        (1, "ok"),
        (2, "ok"),
        (None, "ok"),
        (None, "error"),
    ]
    assert summary[2]["mask_npy"].endswith("stack_002_mask.npy")
    for entry, label in zip(summary[:3], labels):
        assert iou(np.load(entry["mask_npy"]), label) > 0.7
    assert "ambiguous.h5" in summary[4]["message"] and "x, y" in summary[4]["message"]


def test_bad_inputs_are_reported_and_others_processed(model_path, tmp_path):
    image = disc_images(np.random.default_rng(4), 1, 64, contrast=0.5, dose=40.0)[0][0]
    grey = np.clip(image * 4, 0, 255).astype(np.uint8)
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage" * 10)
    (tmp_path / "photo.gif").write_bytes(b"\xff\xd8\xff")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    colour = np.stack([grey, grey[::-1], grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.save(tmp_path / "complex.npy", image.astype(np.complex64))
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "grey_rgb.npy", grey)
    np.save(tmp_path / "sub" / "grey_rgb.npy", grey)
    names = [
        "corrupt.tif",
        "photo.gif",
        "grey_rgb.png",
        "colour.png",
        "complex.npy",
        "nan.npy",
        "missing.npy",
        "grey_rgb.npy",
        "sub/grey_rgb.npy",
    ]
    summary = predict_files(model_path, [tmp_path / n for n in names], tmp_path / "out", device="cpu", colour="refuse")
    status = {s["input"].removeprefix(str(tmp_path) + "/"): s for s in summary}
    for name in ("corrupt.tif", "photo.gif", "colour.png", "complex.npy", "nan.npy", "missing.npy"):
        assert status[name]["status"] == "error" and name in status[name]["message"], name
    assert "unsupported file type '.gif'" in status["photo.gif"]["message"]
    assert "channels differing in" in status["colour.png"]["message"]
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


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    return train_discs(tmp_path_factory.mktemp("model2") / "discs-b.pt", seed=1)


def test_ensemble_mean_uncertainty_and_summary(model_path, second_model, tmp_path):
    images, labels = disc_images(np.random.default_rng(5), 2, 96, contrast=0.5, dose=40.0)
    np.save(tmp_path / "x.npy", images)
    alone = [
        predict_files(m, [tmp_path / "x.npy"], tmp_path / m.stem, device="cpu") for m in (model_path, second_model)
    ]
    both = predict_files(
        [model_path.parent / "*.pt", second_model],
        [tmp_path / "x.npy"],
        tmp_path / "ensemble",
        device="cpu",
        batch_tiles=1,
    )
    for i, entry in enumerate(both):
        members = [np.load(a[i]["probability_npy"]) for a in alone]
        probability = np.load(entry["probability_npy"])
        assert np.allclose(probability, np.mean(members, axis=0), atol=1e-5)
        assert np.allclose(np.load(entry["uncertainty_npy"]), entropy_bits(probability))
        mask = np.load(entry["mask_npy"])
        assert (mask == (probability > 0.5)).all() and iou(mask, labels[i]) > 0.7
        particles = list(csv.DictReader(open(entry["particles_csv"])))
        assert sum(int(p["area_px"]) for p in particles) == mask.sum()
        assert entry["particle_count"] == len(particles) >= ndimage.label(mask)[1] >= 1
        assert entry["ood_score"] is None and entry["pixel_size_A"] is None
    rows = list(csv.DictReader(open(tmp_path / "ensemble" / "summary.csv")))
    assert [r["index"] for r in rows] == ["0", "1"] and tuple(rows[0]) == CSV_FIELDS
    provenance = json.loads((tmp_path / "ensemble" / "provenance.json").read_text())
    assert provenance["models"] == [str(model_path), str(second_model)]
    assert not [p for p in (tmp_path / "ensemble").iterdir() if p.name.startswith(".")]


def test_ensemble_members_must_match(model_path, tmp_path):
    wide = train_discs(tmp_path / "wide.pt", seed=2, width=0.25)
    with pytest.raises(ValueError, match="different architectures.*wide.pt"):
        predict_files([model_path, wide], [], tmp_path / "out", device="cpu")
    coarse = train_discs(tmp_path / "coarse.pt", seed=2, meta={"input_reference": {"pixel_size_A": 0.8}})
    with pytest.raises(ValueError, match="different pixel sizes.*coarse.pt: 0.8"):
        predict_files([model_path, coarse], [], tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match="matches no file"):
        predict_files([tmp_path / "none*.pt"], [], tmp_path / "out", device="cpu")


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    """A model whose meta records its training pixel size (0.4 Å) and input description."""
    images, _ = disc_images(np.random.default_rng(0), 32, 64, contrast=0.5, dose=40.0)
    return train_discs(
        tmp_path_factory.mktemp("calibrated") / "m.pt", seed=0, meta={"input_reference": ood.reference(images, 0.4)}
    )


def test_pixel_size_resampling_and_ood_flag(calibrated_model, tmp_path):
    images, labels = disc_images(np.random.default_rng(6), 1, 64, contrast=0.5, dose=40.0)
    fine = np.kron(images[0], np.ones((2, 2), np.float32))  # the same scene at 0.2 Å/px
    np.save(tmp_path / "fine.npy", fine)
    [missing] = predict_files(calibrated_model, [tmp_path / "fine.npy"], tmp_path / "a", device="cpu")
    assert missing["status"] == "error" and "fine.npy" in missing["message"]
    assert "--pixel-size" in missing["message"]
    [entry] = predict_files(calibrated_model, [tmp_path / "fine.npy"], tmp_path / "b", device="cpu", pixel_size_A=0.2)
    assert entry["resampled"] and np.load(entry["mask_npy"]).shape == (128, 128)
    assert iou(np.load(entry["mask_npy"]), np.kron(labels[0], np.ones((2, 2)))) > 0.7
    assert entry["ood_score"] < entry["ood_threshold"] == ood.DEFAULT_THRESHOLD
    assert entry["ood_flag"] is False
    blurred = ndimage.gaussian_filter(images[0], 3)
    np.save(tmp_path / "blurred.npy", blurred)
    [shifted] = predict_files(
        calibrated_model, [tmp_path / "blurred.npy"], tmp_path / "c", device="cpu", pixel_size_A=0.4
    )
    assert not shifted["resampled"] and shifted["ood_flag"] is True
    [forced] = predict_files(
        calibrated_model, [tmp_path / "blurred.npy"], tmp_path / "d", device="cpu", pixel_size_A=0.4, ood_threshold=1e6
    )
    assert forced["ood_flag"] is False


def test_emd_pixel_size_from_file(calibrated_model, tmp_path):
    from rsciio.emd import file_writer

    images, labels = disc_images(np.random.default_rng(7), 1, 64, contrast=0.5, dose=40.0)
    fine = np.kron(images[0], np.ones((2, 2), np.float32))
    axes = [{"name": n, "size": 128, "navigate": False, "scale": 0.02, "offset": 0.0, "units": "nm"} for n in "yx"]
    file_writer(
        str(tmp_path / "scan.emd"),
        {"data": fine, "axes": axes, "metadata": {"General": {"title": "scan"}, "Signal": {}}, "original_metadata": {}},
    )
    assert read_images(tmp_path / "scan.emd")[1] == pytest.approx(0.2)
    [entry] = predict_files(
        calibrated_model, [tmp_path / "scan.emd"], tmp_path / "given", device="cpu", pixel_size_A=0.4
    )
    assert entry["status"] == "ok" and not entry["resampled"] and entry["pixel_size_A"] == 0.4  # the user's size wins
    small = Instances.with_defaults(min_area_nm2=0.05)  # the discs are 0.05-0.25 nm^2
    [entry] = predict_files(calibrated_model, [tmp_path / "scan.emd"], tmp_path / "out", device="cpu", instances=small)
    assert entry["status"] == "ok" and entry["resampled"]
    assert entry["pixel_size_A"] == pytest.approx(0.2)
    particles = list(csv.DictReader(open(entry["particles_csv"])))
    assert entry["mean_particle_area_nm2"] == pytest.approx(np.mean([float(p["area_nm2"]) for p in particles]))
    assert particles and all(float(p["area_nm2"]) >= 0.05 for p in particles)
    (tmp_path / "broken.emd").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="broken.emd"):
        read_images(tmp_path / "broken.emd")


@pytest.mark.parametrize("suffix", [".dm3", ".dm4"])
def test_dm_pixels_and_pixel_size(tmp_path, suffix):
    """A DigitalMicrograph file written by tests/dm_writer.py (thumbnail first, as DM writes them): the pixels
    come back unchanged and unrotated, the X/Y calibration (0.025 nm) as 0.25 Å."""
    image = np.random.default_rng(9).normal(size=(48, 64)).astype(np.float32)
    image[0, -1] = 100.0  # top right: a transpose or flip moves it
    path = write_dm(tmp_path / f"scan{suffix}", image, scale=0.025, units="nm", origin=12.0)
    data, version = path.read_bytes(), int(suffix[-1])
    root_length = int.from_bytes(data[4 : 8 if version == 3 else 12], "big")  # file size - 16 (DM3) / 24 (DM4)
    assert int.from_bytes(data[:4], "big") == version and root_length == len(data) - 8 * (version - 1)
    [read], pixel_size_A = read_images(path)
    assert read.dtype == np.float32 and read.shape == (48, 64)
    np.testing.assert_array_equal(read, image)
    assert pixel_size_A == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("scale", "units", "pixel_size_A"),
    [(1.0, "", None), (0.5, "1/nm", None), (2.5e-3, "µm", 25.0), (0.4, "Å", 0.4), ((0.025, 1.0), ("nm", ""), None)],
)
def test_dm_units(tmp_path, scale, units, pixel_size_A):
    """Only a length calibration on both image axes gives a pixel size; an uncalibrated image (DM writes scale 1,
    no units), a diffraction pattern or a half-calibrated image gives None."""
    path = write_dm(tmp_path / "image.dm3", np.ones((48, 64), np.int16), scale=scale, units=units)
    assert read_images(path)[1] == (None if pixel_size_A is None else pytest.approx(pixel_size_A))


def test_dm_stack_big_endian_and_non_square_pixels(tmp_path):
    """A uint16 stack (Z, Y, X) in a big-endian DM3 (old Macs): three images and the Y/X pixel size; pixels
    that are not square are an error naming the file."""
    stack = np.arange(3 * 48 * 64, dtype=np.uint16).reshape(3, 48, 64)
    path = write_dm(
        tmp_path / "stack.dm3", stack, scale=(0.025, 0.025, 1.0), units=("nm", "nm", "s"), little_endian=False
    )
    images, pixel_size_A = read_images(path)
    np.testing.assert_array_equal(np.stack(images), stack)
    assert pixel_size_A == pytest.approx(0.25)
    write_dm(tmp_path / "wide.dm4", stack[0], scale=(0.05, 0.025), units="nm")
    with pytest.raises(ValueError, match=r"wide.dm4: non-square pixels \(0.25 x 0.5 Å\)"):
        read_images(tmp_path / "wide.dm4")


def test_dm4_tag_lengths(tmp_path):
    """The writer's DM4 tag lengths, which rosettasciio skips over unread: walking the root group by them alone
    ends on the 8 zero bytes that close the file, whose size the header holds."""
    data = write_dm(tmp_path / "scan.dm4", np.zeros((48, 64), np.float32), scale=0.025, units="nm").read_bytes()
    version, root_length, _ = struct.unpack(">iQi", data[:16])
    assert version == 4 and root_length == len(data) - 24
    [n_tags] = struct.unpack(">Q", data[18:26])
    at = 26
    for _ in range(n_tags):
        [name_length] = struct.unpack(">H", data[at + 1 : at + 3])
        [length] = struct.unpack(">Q", data[at + 3 + name_length : at + 11 + name_length])
        at += 11 + name_length + length
    assert data[at:] == bytes(8)


def test_dm_real_file():
    """A real DigitalMicrograph file, if EMSIM_DM_SAMPLE names one (a .dm3/.dm4 with a calibrated image)."""
    sample = os.environ.get("EMSIM_DM_SAMPLE")
    if not sample:
        pytest.skip("set EMSIM_DM_SAMPLE to a real .dm3/.dm4 file")
    images, pixel_size_A = read_images(sample)
    assert images and images[0].ndim == 2 and pixel_size_A > 0


def test_bad_images_fail_alone_and_cli_status(model_path, tmp_path, capsys):
    images, _ = disc_images(np.random.default_rng(8), 2, 64, contrast=0.5, dose=40.0)
    stack = np.stack([images[0], np.full((64, 64), 7.0, np.float32), images[1]])
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "small.npy", images[0][:20, :40])
    nan = images[1].copy()
    nan[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    names = ["stack.npy", "small.npy", "nan.npy", "missing.tif"]
    status = main(
        [
            "predict",
            str(model_path),
            *[str(tmp_path / n) for n in names],
            "-o",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--tile",
            "64",
        ]
    )
    assert status == 1
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert [(Path(r["input"]).name, r["index"], r["status"]) for r in rows] == [
        ("stack.npy", "0", "ok"),
        ("stack.npy", "1", "error"),
        ("stack.npy", "2", "ok"),
        ("small.npy", "", "error"),
        ("nan.npy", "", "error"),
        ("missing.tif", "", "error"),
    ]
    assert "stack.npy [image 1]: image is constant" in rows[1]["message"]
    assert "smaller than the model's minimum 32 px" in rows[3]["message"]
    assert "nan.npy: image contains NaN" in rows[4]["message"]
    assert not (tmp_path / "out" / "stack_001_mask.png").exists()
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1].startswith("2 ok, 4 failed")
    assert "%|" not in captured.err  # no progress bar when stderr is not a terminal


def test_scale_mismatch_beyond_4x_stops_an_input_unless_allowed(calibrated_model, tmp_path):
    """A 112 px HAADF frame at 12.49 Å/px (as the JEOL DM4 of the shared folder) against a 0.4 Å model."""
    frame = np.random.default_rng(8).normal(100, 10, (112, 112)).astype(np.float32)
    path = write_dm(tmp_path / "haadf.dm4", frame, scale=0.001249, units="µm")
    [entry] = predict_files(calibrated_model, [path], tmp_path / "a", device="cpu")
    assert entry["status"] == "error"
    for part in ("haadf.dm4", "12.49 Å", "0.4 Å", "31.2x", "--pixel-size", "--allow-rescale"):
        assert part in entry["message"], part
    [entry] = predict_files(calibrated_model, [path], tmp_path / "b", device="cpu", allow_rescale=True)
    assert entry["status"] == "ok" and entry["resampled"]


@pytest.mark.parametrize("value", ["0", "-0.4", "nan", "inf", "1e-6", "1e6"])
def test_cli_rejects_bad_pixel_sizes_in_one_line(model_path, tmp_path, value, capsys):
    np.save(tmp_path / "x.npy", np.zeros((64, 64)))
    code = main(
        ["predict", str(model_path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), "--pixel-size", value]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2 and f"--pixel-size: {value} is not a finite number" in error and len(error.splitlines()) == 1


def touching_discs(tmp_path) -> Path:
    """Two discs that touch (radius 8 px, centres 16 px apart) and one apart, as a Poisson image."""
    yy, xx = np.mgrid[:96, :96]
    mask = np.zeros((96, 96), bool)
    for cy, cx, r in ((48, 36, 8), (48, 52, 8), (20, 75, 6)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    np.save(tmp_path / "touch.npy", np.random.default_rng(0).poisson(40 * (1 - 0.5 * mask)).astype(np.float32))
    return tmp_path / "touch.npy"


def test_particles_split_touching_and_csv(model_path, tmp_path):
    path = touching_discs(tmp_path)
    [entry] = predict_files(model_path, [path], tmp_path / "split", device="cpu")
    rows = list(csv.DictReader(open(entry["particles_csv"])))
    assert tuple(rows[0]) == PARTICLE_FIELDS and entry["particle_count"] == len(rows) == 3
    assert ndimage.label(np.load(entry["mask_npy"]))[1] == 2  # the prediction joins the touching two
    assert sum(int(r["area_px"]) for r in rows) == np.load(entry["mask_npy"]).sum()
    probability = np.load(entry["probability_npy"])
    for r in rows:
        y, x = round(float(r["centroid_y_px"])), round(float(r["centroid_x_px"]))
        assert probability[y, x] > 0.5 and float(r["mean_probability"]) > 0.5
        assert r["diameter_nm"] == "" and 0 <= float(r["mean_uncertainty"]) <= 1  # no pixel size: no nm
    assert not (tmp_path / "split" / "size_distribution.png").exists()
    code = main(["predict", str(model_path), str(path), "-o", str(tmp_path / "whole"), "--no-split"])
    [row] = list(csv.DictReader(open(tmp_path / "whole" / "summary.csv")))
    assert code == 0 and row["particle_count"] == "2"


def test_particles_minimum_size_and_size_distribution(calibrated_model, tmp_path):
    path = touching_discs(tmp_path)  # discs of 0.2-0.3 nm^2 at 0.4 Å/px
    [none] = predict_files(calibrated_model, [path], tmp_path / "a", device="cpu", pixel_size_A=0.4)
    assert none["particle_count"] == 0 and none["mean_diameter_nm"] is None
    small = Instances.with_defaults(min_area_nm2=0.05)
    [entry] = predict_files(calibrated_model, [path], tmp_path / "b", device="cpu", pixel_size_A=0.4, instances=small)
    rows = list(csv.DictReader(open(entry["particles_csv"])))
    diameters = [float(r["diameter_nm"]) for r in rows]
    assert entry["particle_count"] == 3 and entry["median_diameter_nm"] == pytest.approx(np.median(diameters))
    for r, d in zip(rows, diameters):
        assert d == pytest.approx(2 * np.sqrt(int(r["area_px"]) / np.pi) * 0.04)
    assert figure_content.read(tmp_path / "b" / "size_distribution.png").ink > 0.02


@pytest.mark.parametrize(("flag", "value"), [("--min-area-nm2", "-1"), ("--min-depth-px", "0")])
def test_cli_rejects_bad_particle_settings(model_path, tmp_path, flag, value, capsys):
    np.save(tmp_path / "x.npy", np.zeros((64, 64)))
    code = main(["predict", str(model_path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "out"), flag, value])
    error = capsys.readouterr().err.strip()
    assert code == 2 and flag in error and len(error.splitlines()) == 1


def test_models_with_nan_weights_are_refused_by_name(model_path, tmp_path):
    payload = torch.load(model_path, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    payload["state_sha256"] = state_digest(payload["state_dict"])
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((64, 64)))
    for models in ([bad], [model_path, bad]):  # alone and in an ensemble
        with pytest.raises(ValueError, match=f"model file {bad} holds NaN or infinite weights in {name}"):
            predict_files(models, [tmp_path / "x.npy"], tmp_path / "out")


def test_an_image_beyond_the_memory_limit_is_refused_with_its_estimate(model_path, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((256, 256)).astype(np.float32))
    code = main(
        ["predict", str(model_path), str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"), "--max-memory-GB", "0.001"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "needs about 0.0" in out and "raise --max-memory-GB" in out
