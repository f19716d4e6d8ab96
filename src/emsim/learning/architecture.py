"""The U-Net's shape as numbers, torch-free: :mod:`emsim.learning.models` builds it, the study
config checks image sizes and LoRA ranks against it before any job runs."""

from __future__ import annotations

ENCODER_CHANNELS = (64, 64, 128, 256, 512)  # stem, stages 1-4, at width 1
DECODER_CHANNELS = (256, 128, 64, 32, 16)
STEM_KERNEL = 7  # the stem's 7x7 convolution
DOWNSAMPLING = 32  # the encoder halves an image five times: sides must divide by this
MIN_CHANNELS = 8  # no layer narrower, at any width


def scaled(channels: int, width: float) -> int:
    """A layer's channels at ``width`` (a channel multiplier), at least MIN_CHANNELS."""
    return max(MIN_CHANNELS, int(round(channels * width)))


def lora_max_rank(width: float, in_channels: int = 1) -> int:
    """Largest LoRA rank every adapted convolution allows: the smallest of their out channels (the
    last decoder block's) and fan-ins (the stem's)."""
    return min(scaled(DECODER_CHANNELS[-1], width), in_channels * STEM_KERNEL**2)
