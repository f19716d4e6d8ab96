"""U-Net with a ResNet18-style encoder, trainable block groups, and the emsim model file format.

The architecture is that of segmentation-models-pytorch ``Unet("resnet18", in_channels=1,
classes=2)`` (decoder channels 256, 128, 64, 32, 16; nearest 2x upsampling; no attention; 3x3
segmentation head), rebuilt here with random initialisation so nothing is downloaded.
At ``width=1`` it has 14,322,082 parameters, 78.0 % of them in the encoder: ResNet18 without its
classifier and with a 1-channel stem (11,170,240), decoder blocks (3,151,552), head (290). The
paper notes infer 14,323,492 (1,410 more); no variant of this architecture (stem bias, head kernel,
class count, attention, auxiliary classifier, input skip) gives that number exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emsim.io import atomic_path
from emsim.learning import adapters
from emsim.learning.architecture import DECODER_CHANNELS, DOWNSAMPLING, ENCODER_CHANNELS, STEM_KERNEL, scaled
from emsim.learning.methods import GROUPS, finetune_groups

FORMAT_VERSION = 1
MODULES = {  # block group (emsim.learning.methods.GROUPS) -> the submodules it holds
    "head": ("decoder.head",),
    "decoder": ("decoder.blocks",),
    "layer4": ("encoder.layer4",),
    "layer3": ("encoder.layer3",),
    "layer2": ("encoder.layer2",),
    "layer1": ("encoder.layer1",),
    "stem": ("encoder.conv1", "encoder.bn1"),
}


def pad_to_multiple(images: np.ndarray, multiple: int = DOWNSAMPLING) -> np.ndarray:
    """Reflect-pad the last two axes at the bottom/right up to a multiple of ``multiple``."""
    h, w = images.shape[-2:]
    pad = [(0, 0)] * (images.ndim - 2) + [(0, -h % multiple), (0, -w % multiple)]
    return np.pad(images, pad, mode="reflect") if any(p for _, p in pad) else images


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv + BN, identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class Encoder(nn.Module):
    """ResNet18 without the classifier: stem (conv7x7/2, BN, ReLU) then maxpool + 4 stages."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        stem, *stages = (scaled(c, width) for c in ENCODER_CHANNELS)
        self.out_channels = (stem, *stages)
        self.conv1 = nn.Conv2d(in_channels, stem, STEM_KERNEL, 2, STEM_KERNEL // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, previous = [], stem
        for i, channels in enumerate(stages):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(previous, channels, stride), BasicBlock(channels, channels, 1)))
            previous = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8, 16, 32."""
        f1 = F.relu(self.bn1(self.conv1(x)), inplace=True)
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]


class DecoderBlock(nn.Module):
    """2x nearest upsampling, optional skip concatenation, 2x (conv3x3 no bias + BN + ReLU)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class Decoder(nn.Module):
    """U-Net decoder (5 blocks, the last without skip) plus the 3x3 segmentation head."""

    def __init__(self, encoder_channels: tuple[int, ...], classes: int, width: float):
        super().__init__()
        out = [scaled(c, width) for c in DECODER_CHANNELS]
        deep_first = encoder_channels[::-1]  # stride 32, 16, 8, 4, 2
        ins = [deep_first[0], *out[:-1]]
        skips = [*deep_first[1:], 0]
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, out))
        self.head = nn.Conv2d(out[-1], classes, 3, 1, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, *skips = features[::-1]
        for block, skip in zip(self.blocks, [*skips, None]):
            x = block(x, skip)
        return self.head(x)


class UNet(nn.Module):
    """ResNet18-encoder U-Net giving per-pixel class logits (N, classes, H, W).

    Parts for freezing: ``encoder`` (stem + 4 residual stages) and ``decoder`` (the 5 decoder
    blocks AND the segmentation head). ``width`` scales every channel count (e.g. 0.125 for CPU
    studies), with a floor of 8 channels. H and W must be divisible by 32. Weights are random,
    drawn from ``generator``.
    """

    def __init__(
        self, width: float = 1.0, in_channels: int = 1, classes: int = 2, generator: torch.Generator | None = None
    ):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.config = {"width": float(width), "in_channels": int(in_channels), "classes": int(classes)}
        self.encoder = Encoder(in_channels, width)
        self.decoder = Decoder(self.encoder.out_channels, classes, width)
        self.frozen: tuple[str, ...] = ()  # submodules kept in eval mode (see train)
        self._init_weights(generator)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        for module in self.encoder.modules():  # torchvision ResNet init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
        for module in self.decoder.blocks.modules():  # smp decoder init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)
        nn.init.xavier_uniform_(self.decoder.head.weight, generator=generator)
        nn.init.zeros_(self.decoder.head.bias)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % DOWNSAMPLING or w % DOWNSAMPLING:
            raise ValueError(f"input size {h}x{w} px is not divisible by {DOWNSAMPLING}")
        return self.decoder(self.encoder(x))

    def train(self, mode: bool = True) -> UNet:
        """Set train/eval mode; frozen submodules always stay in eval mode (BN statistics fixed)."""
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).train(False)
        return self

    def set_trainable(self, groups: tuple[str, ...]) -> None:
        """Only the parameters of block ``groups`` (and LoRA adapters) get gradients; the other
        groups' submodules stay in eval mode (BN statistics neither used from the batch nor updated)."""
        self.frozen = tuple(m for g in GROUPS if g not in groups for m in MODULES[g])
        for name, parameter in self.named_parameters():
            adapter = ".lora_A." in name or ".lora_B." in name
            parameter.requires_grad_(adapter or group_of(name) in groups)
        self.train(self.training)

    def parameters_of(self, group: str) -> list[nn.Parameter]:
        """The parameters of one block group, adapters included, in module order."""
        return [p for name, p in self.named_parameters() if group_of(name) == group]

    def add_lora(self, rank: int, alpha: float, seed: int) -> int:
        """A LoRA adapter on every convolution but the head's (:func:`emsim.learning.adapters.add_lora`)."""
        return adapters.add_lora(self, rank, alpha, torch.Generator().manual_seed(seed))

    def merged(self) -> UNet:
        """A plain U-Net computing the same function (LoRA adapters merged), or this one."""
        return adapters.merge_lora(self) if any(isinstance(m, adapters.LoRAConv2d) for m in self.modules()) else self

    def adapt_batchnorm(self, images: torch.Tensor, batch_size: int, channels_last: bool) -> None:
        """AdaBN on ``images`` (:func:`emsim.learning.adapters.adapt_batchnorm`)."""
        adapters.adapt_batchnorm(self, images, batch_size, channels_last)


def group_of(parameter_name: str) -> str:
    """Block group of a parameter (by the dotted name of its module, LoRA's ``.base`` ignored)."""
    name = parameter_name.replace(".base.", ".")
    for group, prefixes in MODULES.items():
        if any(name.startswith(prefix + ".") for prefix in prefixes):
            return group
    raise ValueError(f"parameter {parameter_name} belongs to no block group")


def freeze(model: UNet, part: str) -> None:
    """Freeze one part (``encoder``, ``decoder`` = the upsampling blocks, as in the seed study: the
    head still trains; ``none``: everything trains), as :class:`UNet.set_trainable` does."""
    model.set_trainable(finetune_groups(part))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"model meta value of type {type(value).__name__} is not JSON-serialisable")


def state_digest(state) -> str:
    """sha256 over a (nested) state: every tensor's name, dtype, shape and bytes, other values by
    their JSON text, mappings in key order. The integrity check of model files and checkpoints."""
    h = hashlib.sha256()

    def walk(value, name: str) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key], f"{name}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{name}/{i}")
        else:
            h.update(f"{name}={json.dumps(value, default=str)}".encode())

    walk(state, "")
    return h.hexdigest()


def check_state(state: dict, digest: str | None, what: str) -> None:
    """Raise ValueError naming ``what`` if ``state`` does not match its stored ``digest`` or one of its
    top-level tensors holds a non-finite value (a missing digest: a file from before checksums, accepted)."""
    if digest is not None and state_digest(state) != digest:
        raise ValueError(f"{what} is damaged: its weights do not match the checksum stored with them")
    bad = [
        name
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        raise ValueError(
            f"{what} holds NaN or infinite weights in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
        )


def save_model(path: str | os.PathLike, model: UNet, *, meta: dict) -> None:
    """Write ``{"emsim_model": version, "state_dict", "state_sha256", "model_config", "meta"}`` atomically.

    ``meta`` must be JSON-serialisable (numpy scalars and paths are converted); ``state_sha256``
    (:func:`state_digest` of the weights) is verified by every reader."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "emsim_model": FORMAT_VERSION,
        "state_dict": state,
        "state_sha256": state_digest(state),
        "model_config": dict(model.config),
        "meta": json.loads(json.dumps(meta, default=_json_default)),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_model_file(path: str | os.PathLike) -> dict:
    """The verified payload of a model file: ValueError naming the file if it is not an emsim model
    file of this format, is damaged (checksum) or holds non-finite weights."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path} is not an emsim model file ({error.__class__.__name__})") from error
    if not isinstance(payload, dict) or "emsim_model" not in payload or not isinstance(payload.get("state_dict"), dict):
        raise ValueError(f"{path} is not an emsim model file (no 'emsim_model' key)")
    if payload["emsim_model"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: emsim model format {payload['emsim_model']} is not supported (expected {FORMAT_VERSION})"
        )
    check_state(payload["state_dict"], payload.get("state_sha256"), f"model file {path}")
    return payload


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[UNet, dict]:
    """Load a model written by :func:`save_model`; returns ``(model in eval mode, meta)``.

    Raises ValueError naming the file if it is not an emsim model file, is damaged or its weights
    do not fit the model it describes."""
    payload = read_model_file(path)
    try:
        model = UNet(**payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"{path}: the weights do not fit the model the file describes ({first})") from None
    return model.to(map_location).eval(), payload["meta"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda if available, else cpu; anything else as ``torch.device(device)``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
