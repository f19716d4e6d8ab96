"""Reading user micrographs: greyscale float32 images and, where the file records it, the pixel size.

Formats: TIFF (``.tif``/``.tiff``, pages or samples as a stack), PNG, ``.npy``, HDF5
(``.h5``/``.hdf5``: dataset ``images``, else the only 2D/3D numeric dataset), and through
rosettasciio Gatan DigitalMicrograph (``.dm3``/``.dm4``) and EMD (``.emd``: Velox and NCEM),
whose calibrated pixel size is returned in Å. A 2D array is one image; a 3D array is a stack of
images (N, H, W), unless its last axis has 2-4 entries and the others are longer, which is read
as colour channels (H, W, C). Colour images are accepted only if their colour channels are
identical (an alpha channel is dropped); otherwise they are an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np
import tifffile
from PIL import Image

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".h5", ".hdf5", ".dm3", ".dm4", ".emd")
UNITS_A = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "pm": 0.01, "nm": 10.0, "µm": 1e4, "um": 1e4, "μm": 1e4}


def read_images(path: str | os.PathLike) -> tuple[list[np.ndarray], float | None]:
    """Images (float32, H x W) of one file and its pixel size in Å (None if the file has none).

    Raises ValueError naming the file if it is missing, corrupt or not a greyscale image."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(SUFFIXES)}")
    pixel_size_A = None
    try:
        if suffix in (".tif", ".tiff"):
            array = _read_tiff(path)
        elif suffix in (".png", ".jpg", ".jpeg"):
            array = _read_png(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            array = _read_hdf5(path)
        else:
            array, pixel_size_A = _read_rsciio(path, suffix)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except Exception as error:  # corrupt files raise library-specific errors
        raise ValueError(f"{path}: cannot be read as {suffix} ({error})") from None
    try:
        return _as_images(array), pixel_size_A
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        if "S" in series.axes:  # colour samples: move them last
            array = np.moveaxis(array, series.axes.index("S"), -1)
    return array


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


def _read_rsciio(path: Path, suffix: str) -> tuple[np.ndarray, float | None]:
    """The only image signal of a DigitalMicrograph or EMD file and its pixel size in Å."""
    if suffix == ".emd":
        from rsciio.emd import file_reader
    else:
        from rsciio.digitalmicrograph import file_reader
    signals = [s for s in file_reader(str(path)) if np.ndim(s["data"]) in (2, 3)]
    if len(signals) != 1:
        raise ValueError(f"holds {len(signals)} image signals; export the one to segment")
    signal = signals[0]
    if suffix != ".emd":
        signal["data"] = _dm_byte_order(signal)
    axes = sorted(signal["axes"], key=lambda a: a.get("index_in_array", 0))[-2:]
    sizes = []
    for axis in axes:
        factor = UNITS_A.get(str(axis.get("units", "")).strip().lower())
        sizes.append(None if factor is None else float(axis["scale"]) * factor)
    if None in sizes:
        return signal["data"], None
    if not np.isclose(*sizes, rtol=1e-3):
        raise ValueError(f"non-square pixels ({sizes[0]:g} x {sizes[1]:g} Å) are not supported")
    return signal["data"], sizes[1]


def _dm_byte_order(signal: dict) -> np.ndarray:
    """The pixels of a DM signal in the file's byte order: rosettasciio (0.15) reads them in the machine's order
    even when the file's tag data are big-endian (DM3 from old Macs), which garbles every pixel."""
    data = signal["data"]
    image = signal["original_metadata"].get("ImageList", {}).get("TagGroup0", {}).get("ImageData", {}).get("Data")
    file_order = image.get("endian") if isinstance(image, dict) else None
    if file_order in ("big", "little") and file_order != sys.byteorder and data.dtype.isnative:
        data = data.byteswap()  # same dtype, bytes swapped: the values the file holds
    return data


def _as_images(array: np.ndarray) -> list[np.ndarray]:
    """Split a 2D/3D array into greyscale images, converting grey-valued colour images."""
    array = np.asarray(array)
    if array.dtype.kind not in "buif":
        raise ValueError(f"image data of type {array.dtype} is not real numbers")
    if array.ndim == 3 and 2 <= array.shape[-1] <= 4 and min(array.shape[:2]) > 4:
        array = _colour_to_grey(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D stack, got shape {array.shape}")
    return list(array.astype(np.float32))


def _colour_to_grey(array: np.ndarray) -> np.ndarray:
    channels = array[..., :3] if array.shape[-1] in (3, 4) else array[..., :1]  # drop alpha
    if not (channels == channels[..., :1]).all():
        raise ValueError(
            f"colour image with {array.shape[-1]} differing channels; convert it to greyscale (one channel) first"
        )
    return channels[..., 0]
