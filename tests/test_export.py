"""ONNX export of one model and of an ensemble, checked with onnxruntime on CPU."""

import json

import numpy as np
import onnx
import pytest
import torch

from emsim.cli import main
from emsim.export import export_onnx, onnx_session
from emsim.learning.models import UNet, save_model
from emsim.predict import load_ensemble


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    for seed in range(2):
        model = UNet(width=0.125, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
        save_model(folder / f"m{seed}.pt", model, meta={"stage": "pretrain", "seed": seed})
    return folder


@pytest.mark.parametrize("pattern", ["m0.pt", "m*.pt"])
def test_onnx_matches_pytorch_with_dynamic_size(models, tmp_path, pattern):
    out = tmp_path / "model.onnx"
    assert main(["export", str(models / pattern), "-o", str(out)]) == 0
    ensemble, _, paths = load_ensemble([models / pattern])
    session = onnx_session(out)
    for shape in [(1, 1, 64, 96), (3, 1, 128, 32)]:
        x = np.random.default_rng(1).standard_normal(shape, np.float32)
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            expected = ensemble(torch.from_numpy(x)).numpy()
        assert got.shape == (shape[0], 2, *shape[2:])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["emsim_meta"])
    assert [m["file"] for m in meta] == [str(p) for p in paths] and len(paths) == (1 if pattern == "m0.pt" else 2)


def test_export_errors_name_the_file(models, tmp_path):
    wide = UNet(width=0.25)
    save_model(tmp_path / "wide.pt", wide, meta={})
    with pytest.raises(ValueError, match="wide.pt"):
        export_onnx([models / "m0.pt", tmp_path / "wide.pt"], tmp_path / "x.onnx")
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "y.onnx")]) == 2
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*"))


def test_a_failing_export_names_the_output_not_its_temporary(models, tmp_path, monkeypatch):
    def broken(model, args, path, **kwargs):
        raise RuntimeError(f"cannot write {path}")

    monkeypatch.setattr(torch.onnx, "export", broken)
    out = tmp_path / "model.onnx"
    with pytest.raises(ValueError, match=rf"{out}: the ONNX export failed \(RuntimeError: cannot write {out}\)$"):
        export_onnx([models / "m0.pt"], out)
    assert not list(tmp_path.iterdir())  # no temporary left behind
