"""Small micrograph files for the tests: dark discs (particles) on a noisy background, with masks and YOLO boxes."""

from pathlib import Path

import numpy as np
from PIL import Image

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "micrographs"
REAL_REASON = f"no real micrographs at {REAL} (a clone without ../shared)"


def scene(rng: np.random.Generator, size_px: int = 160, count: int = 6) -> tuple[np.ndarray, np.ndarray, list]:
    """(image 0-255 float, mask bool, YOLO boxes) of ``count`` discs of radius 8-14 px."""
    yy, xx = np.mgrid[:size_px, :size_px]
    mask = np.zeros((size_px, size_px), bool)
    boxes = []
    for _ in range(count):
        r = rng.uniform(8, 14)
        cy, cx = rng.uniform(r + 1, size_px - r - 1, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        boxes.append((cx / size_px, cy / size_px, 2 * r / size_px, 2 * r / size_px))
    image = np.clip(rng.normal(150, 12, mask.shape) - 60 * mask, 0, 255)
    return image, mask, boxes


def write_micrographs(folder: Path, stems: list[str], seed: int = 0, size_px: int = 160) -> None:
    """``folder/images/<stem>.png``, ``folder/masks/<stem>.png`` (0/255) and ``folder/boxes/<stem>.txt``."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "boxes"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image, mask, boxes = scene(rng, size_px)
        Image.fromarray(image.astype(np.uint8)).save(folder / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{stem}.png")
        (folder / "boxes" / f"{stem}.txt").write_text("".join(f"0 {cx} {cy} {w} {h}\n" for cx, cy, w, h in boxes))
