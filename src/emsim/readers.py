"""Reading user micrographs: greyscale float32 images and, where the file records it, the pixel size.

Formats: TIFF (``.tif``/``.tiff``, pages or samples as a stack; pixel size from FEI/Thermo,
Zeiss SEM or ImageJ metadata), PNG, JPEG (``.jpg``/``.jpeg``),
``.npy``, HDF5 (``.h5``/``.hdf5``: dataset ``images``, else the only 2D/3D numeric dataset), MRC
(``.mrc``/``.mrcs``/``.st``/``.ali``, through mrcfile: the header's voxel size, 0 = none), and
through rosettasciio Gatan DigitalMicrograph (``.dm3``/``.dm4``), EMD (``.emd``: Velox and
Berkeley/NCEM), FEI TIA (``.emi``/``.ser``) and HyperSpy (``.hspy``): every image signal of the
file (two signal axes; e.g. a Velox file's HAADF and DF detectors) is one image, spectra and
spectrum images are skipped.

Pixel size: the calibration of the image's last two axes, in any unit spelling the readers
return (``UNITS_A``: Å, A, angstrom, pm, nm, n_m, µm, μm, um, mm, m, any case), converted to Å;
an uncalibrated axis (scale 1 without a unit) or an unknown unit (e.g. 1/nm) gives None with a
logged warning naming the unit, never a wrong number.

Shape: a 2D array is one image; a 3D array is a stack of images (N, H, W), unless its last axis
has 2-4 entries and the others are longer, which is read as colour channels (H, W, C; an alpha
channel is dropped). Colour channels that are equal give that grey image; channels that differ
(an HRTEM image with a burned-in coloured scale bar or text, as DigitalMicrograph exports it)
are read as luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) with a warning that counts
the differing pixels, or refused with ``colour="refuse"``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import tifffile
from PIL import Image
from rsciio import digitalmicrograph, emd, hspy, tia

log = logging.getLogger(__name__)

SUFFIXES = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".h5", ".hdf5",
    ".mrc", ".mrcs", ".st", ".ali", ".dm3", ".dm4", ".emd", ".emi", ".ser", ".hspy",
)  # fmt: skip
RSCIIO = {".dm3": digitalmicrograph, ".dm4": digitalmicrograph, ".emd": emd, ".emi": tia, ".ser": tia, ".hspy": hspy}
UNITS_A = {  # unit spelling (lower case, without '_' and spaces) -> Å
    "a": 1.0, "å": 1.0, "angstrom": 1.0, "ang": 1.0, "pm": 0.01, "nm": 10.0,
    "µm": 1e4, "μm": 1e4, "um": 1e4, "micron": 1e4, "mm": 1e7, "m": 1e10,
}  # fmt: skip
LUMINANCE = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
COLOUR_RULES = ("luminance", "refuse")


def read_images(path: str | os.PathLike, colour: str = "luminance") -> tuple[list[np.ndarray], float | None]:
    """Images (float32, H x W) of one file and its pixel size in Å (None if the file has none).

    ``colour``: ``luminance`` reads an image whose colour channels differ as luminance (with a
    warning), ``refuse`` makes it an error. Raises ValueError naming the file if it is missing,
    corrupt or not an image."""
    if colour not in COLOUR_RULES:
        raise ValueError(f"colour must be one of {', '.join(COLOUR_RULES)}, got {colour!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(SUFFIXES)}")
    pixel_size_A = None
    try:
        if suffix in (".tif", ".tiff"):
            array, pixel_size_A = _read_tiff(path)
        elif suffix in (".png", ".jpg", ".jpeg"):
            array = _read_png(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            array = _read_hdf5(path)
        elif suffix in (".mrc", ".mrcs", ".st", ".ali"):
            array, pixel_size_A = _read_mrc(path)
        else:
            array, pixel_size_A = _read_rsciio(path, suffix)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # corrupt files raise library-specific errors
        raise ValueError(f"{path}: cannot be read as {suffix} ({error})") from None
    try:
        return _as_images(array, colour, path), pixel_size_A
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def unit_factor_A(unit) -> float | None:
    """Å per ``unit`` for a length unit as readers spell it (``nm``, ``n_m``, ``µm``, ``Å``, ...), else None."""
    key = str(unit or "").strip().lower().replace("_", "").replace(" ", "")
    return UNITS_A.get(key)


def _pixel_size_A(axes: list[dict], path: Path) -> float | None:
    """The pixel size in Å of two image axes (``scale``, ``units``), or None with a warning."""
    sizes = []
    for axis in axes:
        unit, scale = axis.get("units"), axis.get("scale", 1.0)
        factor = unit_factor_A(unit)
        if factor is None or not np.isfinite(scale) or scale <= 0:
            if str(unit or "").strip() or scale != 1.0:
                log.warning("%s: calibration %g %r is not a length emsim knows; pixel size unknown", path, scale, unit)
            return None
        sizes.append(float(scale) * factor)
    if not np.isclose(*sizes, rtol=1e-3):
        raise ValueError(f"non-square pixels ({sizes[0]:g} x {sizes[1]:g} Å) are not supported")
    return sizes[1]


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        if "S" in series.axes:  # colour samples: move them last
            array = np.moveaxis(array, series.axes.index("S"), -1)
        return array, _tiff_pixel_size_A(tif, path)


def _tiff_pixel_size_A(tif: tifffile.TiffFile, path: Path) -> float | None:
    """The pixel size a TIFF's instrument metadata records: FEI/Thermo (``[Scan] PixelWidth``, m),
    Zeiss SEM (``ap_pixel_size``), or ImageJ (``unit`` with the X resolution in pixels per unit).
    The resolution tags alone are a print resolution (dpi), not a pixel size: None."""
    if tif.is_fei and "PixelWidth" in (scan := tif.fei_metadata.get("Scan", {})):
        return _pixel_size_A([{"scale": scan["PixelWidth"], "units": "m"}] * 2, path)
    if tif.is_sem and "ap_pixel_size" in tif.sem_metadata:
        _, value, unit = tif.sem_metadata["ap_pixel_size"]
        return _pixel_size_A([{"scale": value, "units": unit}] * 2, path)
    unit = (tif.imagej_metadata or {}).get("unit")
    if unit:
        unit = unit.encode().decode("unicode_escape") if "\\u" in unit else unit  # ImageJ escapes µ
        tags = tif.pages[0].tags
        scales = [tags[name].value[1] / tags[name].value[0] for name in ("YResolution", "XResolution") if name in tags]
        if len(scales) == 2:
            return _pixel_size_A([{"scale": scale, "units": unit} for scale in scales], path)
    return None


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        if image.mode == "P":
            image = image.convert("RGBA")
        return np.asarray(image)


def _read_hdf5(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        if "images" in f:
            return f["images"][()]
        found = []
        f.visititems(
            lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) and item.ndim in (2, 3) else None
        )
        if len(found) != 1:
            raise ValueError(
                f"no 'images' dataset and {len(found)} 2D/3D datasets "
                f"({', '.join(found) or 'none'}); name the image dataset 'images'"
            )
        return f[found[0]][()]


def _read_mrc(path: Path) -> tuple[np.ndarray, float | None]:
    """The images of an MRC file and its voxel size in Å (None if the header's is 0)."""
    with mrcfile.open(path, permissive=False) as mrc:
        data = np.array(mrc.data)
        voxel = mrc.voxel_size
        sizes = (float(voxel.x), float(voxel.y))
    if min(sizes) <= 0 or not np.isfinite(sizes).all():
        return data, None
    if not np.isclose(*sizes, rtol=1e-3):
        raise ValueError(f"non-square pixels ({sizes[0]:g} x {sizes[1]:g} Å) are not supported")
    return data, sizes[0]


def _read_rsciio(path: Path, suffix: str) -> tuple[np.ndarray, float | None]:
    """The image signals (two signal axes; stacks along navigation axes) of a DigitalMicrograph,
    EMD, TIA or HyperSpy file, one after the other, and their common pixel size in Å. Spectra and
    spectrum images (one signal axis) are skipped."""
    images, sizes = [], []
    for signal in RSCIIO[suffix].file_reader(str(path)):
        axes = signal["axes"]
        signal_axes = [a for a in axes if not a.get("navigate", False)]
        if len(signal_axes) != 2 or np.ndim(signal["data"]) not in (2, 3):
            continue
        data = _dm_byte_order(signal) if RSCIIO[suffix] is digitalmicrograph else signal["data"]
        order = [a.get("index_in_array", i) for i, a in enumerate(axes)]
        last_two = [axes[i] for i in np.argsort(order, kind="stable")][-2:]
        images += list(np.asarray(data).reshape(-1, *np.shape(data)[-2:]))
        sizes.append(_pixel_size_A(last_two, path))
    if not images:
        raise ValueError("holds no image signal (only spectra or other data)")
    if len({np.shape(i) for i in images}) > 1 or len(set(sizes)) > 1:
        raise ValueError(f"holds image signals of different shapes or pixel sizes ({sorted(set(map(str, sizes)))} Å)")
    return np.stack(images), sizes[0]


def _dm_byte_order(signal: dict) -> np.ndarray:
    """The pixels of a DM signal in the file's byte order: rosettasciio (0.15) reads them in the machine's order
    even when the file's tag data are big-endian (DM3 from old Macs), which garbles every pixel."""
    data = signal["data"]
    image = signal["original_metadata"].get("ImageList", {}).get("TagGroup0", {}).get("ImageData", {}).get("Data")
    file_order = image.get("endian") if isinstance(image, dict) else None
    if file_order in ("big", "little") and file_order != sys.byteorder and data.dtype.isnative:
        data = data.byteswap()  # same dtype, bytes swapped: the values the file holds
    return data


def _as_images(array: np.ndarray, colour: str, path: Path) -> list[np.ndarray]:
    """Split a 2D/3D array into greyscale images, converting colour images."""
    array = np.asarray(array)
    if array.dtype.kind not in "buif":
        raise ValueError(f"image data of type {array.dtype} is not real numbers")
    if array.ndim == 3 and 2 <= array.shape[-1] <= 4 and min(array.shape[:2]) > 4:
        array = _colour_to_grey(array, colour, path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D stack, got shape {array.shape}")
    return list(array.astype(np.float32))


def _colour_to_grey(array: np.ndarray, colour: str, path: Path) -> np.ndarray:
    channels = array[..., :3] if array.shape[-1] in (3, 4) else array[..., :1]  # drop alpha
    differ = (channels != channels[..., :1]).any(axis=-1)
    if not differ.any():
        return channels[..., 0]
    if colour == "refuse" or channels.shape[-1] != 3:
        raise ValueError(
            f"colour image with {array.shape[-1]} channels differing in {differ.sum()} pixels "
            f"({differ.mean():.2%}); convert it to greyscale (one channel) first"
        )
    log.warning(
        "%s: colour channels differ in %d pixels (%.2f%%: burned-in annotations?); read as luminance",
        path,
        differ.sum(),
        100 * differ.mean(),
    )
    return channels.astype(np.float64) @ LUMINANCE
