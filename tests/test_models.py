"""U-Net architecture, freezing and the model file format."""

import numpy as np
import pytest
import torch
from torch import nn

from emsim.learning.models import UNet, count_parameters, freeze, load_model, save_model

# segmentation-models-pytorch Unet("resnet18", in_channels=1, classes=2): ResNet18 without fc
# (11,689,512 - 513,000) with a 1-channel stem (-6,272) = 11,170,240; decoder blocks 3,151,552;
# 3x3 head 290. The paper notes' inferred 14,323,492 is 1,410 higher (see the models.py docstring).
FULL_PARAMS = 14_322_082


def small(seed=0):
    return UNet(width=0.125, generator=torch.Generator().manual_seed(seed))


def test_full_width_parameter_count_and_encoder_share():
    model = UNet()
    assert count_parameters(model) == FULL_PARAMS
    assert count_parameters(model.encoder) == 11_170_240
    assert count_parameters(model.decoder.head) == 290
    assert count_parameters(model.encoder) + count_parameters(model.decoder) == FULL_PARAMS
    assert 0.77 < count_parameters(model.encoder) / FULL_PARAMS < 0.79


def test_width_shrinks_every_part():
    full, tiny = UNet(), small()
    assert count_parameters(tiny) < count_parameters(full) / 50
    assert tiny.encoder.out_channels == (8, 8, 16, 32, 64)
    assert [b.conv2[0].out_channels for b in tiny.decoder.blocks] == [32, 16, 8, 8, 8]


def test_output_shape_and_size_check():
    model = small().eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 64, 96)).shape == (3, 2, 64, 96)
    with pytest.raises(ValueError, match="48x64 px is not divisible by 32"):
        model(torch.zeros(1, 1, 48, 64))


def test_init_is_seeded():
    a, b, c = small(1).state_dict(), small(1).state_dict(), small(2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.head.weight"], c["decoder.head.weight"])


@pytest.mark.parametrize(
    "part, frozen, trained",
    [("encoder", "encoder", ("decoder",)), ("decoder", "decoder.blocks", ("encoder", "decoder.head"))],
)
def test_freeze_stops_gradients_and_keeps_batchnorm_in_eval(part, frozen, trained):
    """The seed study freezes the encoder (downsampling blocks) or the decoder (upsampling blocks):
    the segmentation head trains in both."""
    model = small()
    freeze(model, part)
    model.train()
    frozen, trained = model.get_submodule(frozen), [model.get_submodule(name) for name in trained]
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for m in trained for p in m.parameters())
    assert count_parameters(model, trainable_only=True) == sum(count_parameters(m) for m in trained)
    frozen_bns = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    trained_bns = [m for t in trained for m in t.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen_bns and not any(m.training for m in frozen_bns)
    assert all(m.training for m in trained_bns)
    stats = [m.running_mean.clone() for m in frozen_bns]
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, frozen_bns))
    assert all(p.grad is None for p in frozen.parameters())
    freeze(model, "none")
    assert all(m.training for m in frozen_bns)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    with pytest.raises(ValueError, match="'head' is not one of"):
        freeze(model, "head")


def test_model_file_round_trip(tmp_path):
    model = small(3)
    model.train()
    model(torch.randn(4, 1, 64, 64))  # move BN running statistics away from their init
    meta = {"stage": "pretrain", "best_val_loss": np.float32(0.25), "history": [{"epoch": 1}]}
    save_model(tmp_path / "m.pt", model, meta=meta)
    loaded, loaded_meta = load_model(tmp_path / "m.pt")
    assert loaded_meta == {"stage": "pretrain", "best_val_loss": 0.25, "history": [{"epoch": 1}]}
    assert loaded.config == {"width": 0.125, "in_channels": 1, "classes": 2}
    assert not loaded.training
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert list(tmp_path.iterdir()) == [tmp_path / "m.pt"]


def test_non_emsim_files_are_rejected_by_name(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    for name in ("plain.pt", "notes.txt"):
        with pytest.raises(ValueError, match=f"{name} is not an emsim model file"):
            load_model(tmp_path / name)
