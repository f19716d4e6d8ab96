"""Export of one model or an ensemble to ONNX.

The graph takes standardised images ``image`` (N, 1, H, W), H and W multiples of 32 and dynamic
(as N), and gives ``probability`` (N, classes, H, W): the mean of the members' softmax outputs,
as :class:`emsim.predict.Ensemble`. The members' metas (pixel size, OOD description, provenance)
are stored as JSON in the model's ``emsim_meta`` metadata property.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from emsim.io import atomic_path
from emsim.predict import load_ensemble

OPSET = 17
EXAMPLE_PX = 64


def export_onnx(models: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """Write the ensemble of ``models`` (paths or globs) to ``out`` atomically and check it
    against PyTorch with onnxruntime; returns the member files."""
    import onnx

    ensemble, metas, paths = load_ensemble(models, "cpu")
    example = torch.zeros(1, 1, EXAMPLE_PX, EXAMPLE_PX)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(out) as tmp, warnings.catch_warnings(), _naming(out, tmp):
        warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
        torch.onnx.export(
            ensemble,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["probability"],
            opset_version=OPSET,
            dynamic_axes={"image": axes, "probability": axes},
            dynamo=False,
        )
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = "emsim_meta", json.dumps([{"file": str(p), **m} for p, m in zip(paths, metas)])
        onnx.save(graph, str(tmp))
        check(ensemble, tmp)
    return paths


@contextlib.contextmanager
def _naming(out, tmp):
    """Errors of the export or its check name the output file, not the temporary one beside it."""
    try:
        yield
    except Exception as error:
        message = str(error).replace(str(tmp), str(out))
        raise ValueError(f"{out}: the ONNX export failed ({type(error).__name__}: {message})") from error


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session of an exported file."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(ensemble: torch.nn.Module, path: str | os.PathLike, atol: float = 1e-4) -> None:
    """ValueError unless the ONNX file gives the ensemble's probabilities on a non-square input."""
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 1, 96, 160), np.float32))
    with torch.no_grad():
        expected = ensemble(x).numpy()
    got = onnx_session(path).run(None, {"image": x.numpy()})[0]
    error = float(np.abs(got - expected).max())
    if not error <= atol:
        raise ValueError(f"{path}: ONNX probabilities differ from PyTorch by {error:.3g}")
