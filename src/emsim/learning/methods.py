"""Transfer methods: which parameters train in which epoch, at which learning rate, AdaBN and LoRA.

A :class:`Method` is built from a resolved method dict (:func:`emsim.study.methods.resolve`) and
asked by the training loop for its optimiser parameter groups (:meth:`Method.param_groups`, each
with an ``lr_scale``), the trainable set of each epoch (:meth:`Method.set_epoch`), the step before
training (:meth:`Method.setup`: AdaBN, adapters) and the plain model to save (:meth:`Method.export`).
Parameters outside the epoch's trainable set get no gradient and the BatchNorm layers of their
block groups stay in eval mode (:attr:`emsim.learning.models.UNet.frozen`).

- ``finetune``: :func:`emsim.learning.models.freeze` of the ``freeze`` part, the rest trains;
- ``head``: only the segmentation head trains (feature extraction);
- ``gradual``: epoch 0 trains the head (``start: head``) or head and decoder (``start: decoder``);
  every ``every`` epochs the next block group towards the input joins (:data:`GROUPS`);
- ``discriminative``: everything trains; group i (0 = head) at ``lr * factor**i``;
- ``lora``: every convolution except the head gets a :class:`LoRAConv2d` adapter; adapters and the
  head train, the pretrained weights and BN statistics stay fixed; merged into plain weights on export;
- ``adabn``: no gradient step; BN running statistics re-estimated on the target's training images
  (:func:`adapt_batchnorm`); ``adabn: true`` runs it before any other method;
- ``scratch``: everything trains (the model is randomly initialised by the caller).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from emsim.learning.models import UNet, freeze
from emsim.study.methods import GRADUAL_STARTS, GROUPS

MODULES = {
    "head": ("decoder.head",),
    "decoder": ("decoder.blocks",),
    "layer4": ("encoder.layer4",),
    "layer3": ("encoder.layer3",),
    "layer2": ("encoder.layer2",),
    "layer1": ("encoder.layer1",),
    "stem": ("encoder.conv1", "encoder.bn1"),
}


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


class Method:
    """One transfer method (a resolved method dict) applied to a :class:`UNet`."""

    def __init__(self, spec: dict, freeze_part: str = "none", seed: int = 0):
        self.spec, self.name, self.freeze_part, self.seed = dict(spec), spec["name"], freeze_part, seed

    @property
    def trains(self) -> bool:
        """False for ``adabn`` alone: no epoch runs."""
        return self.name != "adabn"

    def setup(self, model: UNet, images: torch.Tensor, batch_size: int, channels_last: bool) -> None:
        """Before training: AdaBN if asked for, LoRA adapters, the trainable set of epoch 0."""
        if self.name == "adabn" or self.spec.get("adabn"):
            adapt_batchnorm(model, images, batch_size, channels_last)
        if self.name == "lora":
            add_lora(model, self.spec["rank"], self.spec["alpha"], torch.Generator().manual_seed(self.seed))
        self.set_epoch(model, 0)

    def trainable_groups(self, epoch: int) -> tuple[str, ...]:
        """Block groups (:data:`GROUPS`) whose pretrained parameters train in ``epoch`` (0-based)."""
        if self.name in ("head", "lora"):
            return ("head",)
        if self.name == "adabn":
            return ()
        if self.name == "gradual":
            first = GRADUAL_STARTS.index(self.spec["start"]) + 1
            return GROUPS[: min(len(GROUPS), first + epoch // self.spec["every"])]
        return GROUPS

    def set_epoch(self, model: UNet, epoch: int) -> None:
        """Trainable parameters and frozen (eval-mode) submodules of ``epoch``."""
        if self.name == "finetune":
            freeze(model, self.freeze_part)
            return
        trainable = self.trainable_groups(epoch)
        model.frozen = tuple(m for g in GROUPS if g not in trainable for m in MODULES[g])
        for name, parameter in model.named_parameters():
            lora = ".lora_A." in name or ".lora_B." in name
            parameter.requires_grad_(lora or _group_of(name) in trainable)
        model.train(model.training)

    def param_groups(self, model: UNet) -> list[dict]:
        """Optimiser parameter groups: every parameter that trains in some epoch, with ``lr_scale``."""
        if self.name == "discriminative":
            return [
                {
                    "params": [p for n, p in model.named_parameters() if _group_of(n) == g],
                    "lr_scale": self.spec["factor"] ** i,
                }
                for i, g in enumerate(GROUPS)
            ]
        if self.name == "gradual":
            return [{"params": list(model.parameters()), "lr_scale": 1.0}]
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def export(self, model: UNet) -> UNet:
        """The model to save: LoRA merged into plain weights, everything else as is."""
        return merge_lora(model) if self.name == "lora" else model


def _group_of(parameter_name: str) -> str:
    """Block group of a parameter (by the dotted name of its module, LoRA's ``.base`` ignored)."""
    name = parameter_name.replace(".base.", ".")
    for group, prefixes in MODULES.items():
        if any(name.startswith(prefix + ".") for prefix in prefixes):
            return group
    raise ValueError(f"parameter {parameter_name} belongs to no block group")
