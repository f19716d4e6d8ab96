"""Readers on real instrument files (../shared/data/micrographs) and on files written by the formats' own libraries."""

import logging

import h5py
import mrcfile
import numpy as np
import pytest
from micrograph_files import REAL, REAL_REASON

from emsim.readers import read_images, unit_factor_A

real = pytest.mark.skipif(not REAL.is_dir(), reason=REAL_REASON)


@real
@pytest.mark.parametrize(
    "name, count, shape, pixel_size_A",
    [  # pixel sizes as the README of the shared folder lists them, in Å
        ("dm/multi_signal.dm3", 1, (512, 512), 0.1775),  # 0.01775 nm; its 1-D plot signal is skipped
        ("dm/JEOL_HAADF_Image.dm4", 1, (112, 112), 12.49),  # 0.001249 µm
        ("tia/128x128-TEM_search.emi", 1, (128, 128), 52.61),  # 5.26 nm, int32
        ("tia/128x128-TEM_search_1.ser", 1, (128, 128), 52.61),
        ("tia/64x64_TEM_images_acquire.emi", 1, (64, 64), 62.82),  # 6.28 nm, float32
        ("tia/03_Scanning Preview.emi", 5, (128, 128), 3.844),  # a stack of 5, 0.384 nm
        ("emd/Camera Ceta Imaging Micro.emd", 1, (512, 512), 31.39),  # Velox, 3.14 nm
        ("tiff/ExampleImage_soot_HRTEM.tif", 1, (512, 512), None),  # RGB with a burned-in scale bar
        ("pt_on_carbon/images/PtC2.jpg", 1, (2048, 2048), None),  # JPEG, grey
        ("pt_on_carbon/images/PtCo1.jpg", 1, (640, 640), None),  # JPEG, RGB with equal channels
    ],
)
def test_real_instrument_files(name, count, shape, pixel_size_A):
    images, found = read_images(REAL / name)
    assert len(images) == count and all(i.shape == shape and i.dtype == np.float32 for i in images)
    assert all(np.isfinite(i).all() and i.std() > 0 for i in images)
    assert found == (None if pixel_size_A is None else pytest.approx(pixel_size_A, rel=1e-3))


@real
def test_rgb_hrtem_tiff_reads_as_luminance_with_a_warning_or_is_refused(caplog):
    path = REAL / "tiff/ExampleImage_soot_HRTEM.tif"
    with caplog.at_level(logging.WARNING, logger="emsim.readers"):
        [image], _ = read_images(path)
    assert "colour channels differ in" in caplog.text and "read as luminance" in caplog.text
    rgb = __import__("tifffile").imread(path).astype(float)
    assert np.allclose(image, rgb[..., :3] @ [0.299, 0.587, 0.114], atol=1e-3)
    with pytest.raises(ValueError, match=r"ExampleImage_soot_HRTEM.tif: colour image .* differing in \d+ pixels"):
        read_images(path, colour="refuse")


@real
def test_equal_channel_jpeg_reads_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="emsim.readers"):
        [image], _ = read_images(REAL / "pt_on_carbon/images/PtCo1.jpg")
    assert caplog.text == ""


@pytest.mark.parametrize(
    "unit, factor",
    [("nm", 10), ("n_m", 10), ("NM", 10), ("µm", 1e4), ("μm", 1e4), ("um", 1e4), ("Å", 1), ("Å", 1), ("A", 1),
     ("angstrom", 1), ("pm", 0.01), ("m", 1e10), ("1/nm", None), ("", None), ("px", None)],
)  # fmt: skip
def test_unit_spellings(unit, factor):
    assert unit_factor_A(unit) == factor


def test_mrc_voxel_size_and_stacks(tmp_path):
    image = np.random.default_rng(0).normal(size=(2, 40, 50)).astype(np.float32)
    with mrcfile.new(tmp_path / "a.mrc") as mrc:
        mrc.set_data(image[0])
        mrc.voxel_size = 1.5
    with mrcfile.new(tmp_path / "b.mrcs") as mrc:
        mrc.set_data(image)  # voxel size 0: uncalibrated
    [one], pixel = read_images(tmp_path / "a.mrc")
    assert np.array_equal(one, image[0]) and pixel == 1.5
    stack, pixel = read_images(tmp_path / "b.mrcs")
    assert len(stack) == 2 and np.array_equal(stack[1], image[1]) and pixel is None
    (tmp_path / "c.mrc").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="c.mrc: "):
        read_images(tmp_path / "c.mrc")


def image_signal(seed: int, scale_nm: float) -> tuple[np.ndarray, dict]:
    """A 40 x 50 random image and the rosettasciio signal dict that holds it (pixels ``scale_nm`` wide)."""
    image = np.random.default_rng(seed).normal(size=(40, 50)).astype(np.float32)
    axes = [
        {"name": n, "size": s, "scale": scale_nm, "offset": 0.0, "units": "nm", "navigate": False}
        for n, s in (("y", 40), ("x", 50))
    ]
    metadata = {"General": {"title": "t"}, "Signal": {}}
    return image, {"data": image, "axes": axes, "metadata": metadata, "original_metadata": {}}


def test_berkeley_emd_with_n_m_units(tmp_path):
    """A Berkeley (NCEM) EMD written by rosettasciio, its dims then relabelled 'n_m' as ncempy spells nm."""
    from rsciio.emd import file_writer

    image, signal = image_signal(1, 0.05)
    file_writer(str(tmp_path / "ncem.emd"), signal)
    with h5py.File(tmp_path / "ncem.emd", "r+") as f:
        dims = [f["signals/t"][name] for name in ("dim1", "dim2")]
        for dim in dims:
            dim.attrs["units"] = "n_m"
    [read], pixel = read_images(tmp_path / "ncem.emd")
    assert np.array_equal(read, image) and pixel == pytest.approx(0.5)


def test_hyperspy_file(tmp_path):
    from rsciio.hspy import file_writer

    image, signal = image_signal(2, 0.2)
    signal["metadata"]["Signal"] = {"signal_type": ""}
    signal |= {"tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {}, "models": {}}
    signal["package_info"] = {"name": "hyperspy", "version": "2.0"}
    file_writer(str(tmp_path / "a.hspy"), signal)
    [read], pixel = read_images(tmp_path / "a.hspy")
    assert np.array_equal(read, image) and pixel == pytest.approx(2.0)


def test_unknown_unit_gives_no_pixel_size_and_a_warning(tmp_path, caplog):
    from dm_writer import write_dm

    write_dm(tmp_path / "d.dm4", np.random.default_rng(3).normal(size=(32, 32)).astype(np.float32), 0.5, "1/nm")
    with caplog.at_level(logging.WARNING, logger="emsim.readers"):
        _, pixel = read_images(tmp_path / "d.dm4")
    assert pixel is None and "'1/nm' is not a length" in caplog.text


@pytest.mark.parametrize(
    "metadata, pixel_size_A",
    [
        ({"imagej": True, "resolution": (4.0, 4.0), "metadata": {"unit": "nm"}}, 2.5),  # 4 px per nm
        ({"imagej": True, "resolution": (4.0, 4.0), "metadata": {"unit": "\\u00B5m"}}, 2500.0),  # ImageJ's µ
        ({"imagej": True, "resolution": (4.0, 4.0), "metadata": {"unit": "micron"}}, 2500.0),
        ({"extratags": [(34682, "s", 0, "[Scan]\nPixelWidth=2.5e-10\nPixelHeight=2.5e-10\n", True)]}, 2.5),  # FEI
        ({"resolution": (300.0, 300.0), "resolutionunit": "INCH"}, None),  # a print resolution, not a pixel size
    ],
)
def test_tiff_calibrations(tmp_path, metadata, pixel_size_A):
    import tifffile

    image = np.random.default_rng(4).integers(0, 1000, (30, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", image, **metadata)
    [read], found = read_images(tmp_path / "a.tif")
    assert np.array_equal(read, image) and found == (None if pixel_size_A is None else pytest.approx(pixel_size_A))


def test_spectra_are_not_images(tmp_path):
    from rsciio.hspy import file_writer

    signal = {
        "data": np.ones((4, 5, 100), np.float32),  # a spectrum image: one signal axis
        "axes": [
            {"name": "y", "size": 4, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
            {"name": "x", "size": 5, "scale": 1.0, "offset": 0.0, "units": "nm", "navigate": True},
            {"name": "E", "size": 100, "scale": 10.0, "offset": 0.0, "units": "eV", "navigate": False},
        ],
        "metadata": {"General": {"title": "eds"}, "Signal": {"signal_type": "EDS"}},
        "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {},
        "models": {}, "package_info": {"name": "hyperspy", "version": "2.0"},
    }  # fmt: skip
    file_writer(str(tmp_path / "eds.hspy"), signal)
    with pytest.raises(ValueError, match="eds.hspy: holds no image signal"):
        read_images(tmp_path / "eds.hspy")
