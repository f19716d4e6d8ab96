"""Resampling an image to another pixel size: bilinear, antialiased when shrinking (PyTorch's).

Micrograph datasets, predictions on files and matching read files at their own pixel size and
bring them to a study's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling (antialiased when shrinking) of a 2D float image to ``shape``."""
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    return F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
