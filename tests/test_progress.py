"""Progress bars: on a terminal only, silent in logs and pipes; `emsim info` streams a dataset under one."""

import io
import sys

import numpy as np

from emsim import data
from emsim.cli import main
from emsim.io import provenance
from emsim.predict import tiled_probability
from emsim.progress import bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_is_silent_when_stderr_is_not_a_terminal(capsys):
    assert list(bar(range(3), "work")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_bar_on_a_terminal_unless_hidden(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(bar(range(3), "work", show=False)) == [0, 1, 2]
    assert terminal.getvalue() == ""
    assert list(bar(range(3), "work", unit="item")) == [0, 1, 2]
    assert "work" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_info_streams_the_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.poisson(40.0, (5, 32, 32)).astype(np.float32) * 1000
    labels = (rng.random((5, 32, 32)) < 0.3).astype(np.uint8)
    splits = {"train": np.arange(3), "val": np.array([3]), "test": np.array([4])}
    attrs = {"domain": "d", "config": {"domain": {"dose": 40}}, "provenance": provenance()}
    data.write_dataset(tmp_path / "d.h5", images, labels, {"seed": np.zeros(5)}, splits, attrs)
    assert main(["info", str(tmp_path / "d.h5")]) == 0
    captured = capsys.readouterr()
    assert f"counts mean {images.mean():.4g}, std {images.std():.4g}" in captured.out
    assert f"particle fraction {labels.mean():.3f}" in captured.out
    assert captured.err == ""


def test_tile_batches_of_a_large_image_get_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    image = np.random.default_rng(1).random((96, 96)).astype(np.float32)
    ones = lambda batch: np.ones((len(batch), *batch.shape[2:]), np.float32)  # noqa: E731
    assert np.allclose(tiled_probability(ones, image, tile_px=32, batch_tiles=64, progress=True), 1)
    assert terminal.getvalue() == ""  # one batch: no bar
    assert np.allclose(tiled_probability(ones, image, tile_px=32, batch_tiles=4, progress=True), 1)
    assert "tiles" in terminal.getvalue()
