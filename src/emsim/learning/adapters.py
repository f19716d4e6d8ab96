"""Torch-side adaptations a transfer method asks of a model: LoRA adapters and AdaBN.

:mod:`emsim.learning.methods` says which method does what; :class:`emsim.learning.models.UNet`
applies these on its behalf (``add_lora``, ``merged``, ``adapt_batchnorm``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class LoRAConv2d(nn.Module):
    """A frozen convolution plus a low-rank update, peft's Conv2d LoRA: ``base(x) + scaling *
    lora_B(lora_A(x))`` with ``lora_A`` a convolution to ``rank`` channels with the layer's kernel,
    stride and padding (Kaiming-uniform init), ``lora_B`` a zero-initialised 1x1 convolution to the
    out channels and ``scaling = alpha / rank``."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, generator: torch.Generator | None = None):
        super().__init__()
        if base.groups != 1:
            raise ValueError("LoRA adapters need ungrouped convolutions")
        self.base = base
        self.lora_A = nn.Conv2d(
            base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation, bias=False
        )
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling

    def delta(self) -> torch.Tensor:
        """The update of the base weight: ``scaling * B @ A`` in the base weight's shape."""
        update = self.lora_B.weight.flatten(1) @ self.lora_A.weight.flatten(1)
        return (update * self.scaling).view_as(self.base.weight)

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """A plain convolution computing the same function."""
        conv = copy.deepcopy(self.base)
        conv.weight.add_(self.delta().to(conv.weight.dtype))
        return conv


def add_lora(model: nn.Module, rank: int, alpha: float, generator: torch.Generator | None = None) -> int:
    """Wrap every Conv2d outside the segmentation head in :class:`LoRAConv2d`; returns how many."""
    targets = [
        name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith("decoder.head")
    ]
    for name in targets:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent)
        setattr(holder, child, LoRAConv2d(getattr(holder, child), rank, alpha, generator))
    return len(targets)


def merge_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every :class:`LoRAConv2d` replaced by its merged convolution."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRAConv2d):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    return model


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, images: torch.Tensor, batch_size: int, channels_last: bool) -> None:
    """AdaBN: reset every BatchNorm layer's running statistics and re-estimate them as the mean
    over batches of ``images`` (in order, no augmentation, no labels, no gradient step)."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    state = [(m.training, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
    for m, (training, momentum) in zip(layers, state):
        m.momentum = momentum
        m.train(training)
