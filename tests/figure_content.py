"""What a written figure shows, read back from its files: the SVG's axes and texts (matplotlib
writes every text as a comment beside its glyphs) and the PNG's ink (non-background pixels)."""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Content:
    axes: int  # plotting areas (colour bars count)
    texts: list[str]  # titles, axis labels, tick labels, legend entries, annotations
    ink: float  # fraction of PNG pixels that differ from the background (the corner pixel)


def read(path: str | Path) -> Content:
    """The content of ``path`` (a .png; its .svg beside it gives axes and texts, if written)."""
    path = Path(path)
    png = np.asarray(Image.open(path.with_suffix(".png")).convert("L"), dtype=np.int16)
    ink = float(np.mean(np.abs(png - png[0, 0]) > 8))
    svg = path.with_suffix(".svg")
    if not svg.exists():
        return Content(axes=0, texts=[], ink=ink)
    text = svg.read_text()
    return Content(
        axes=len(re.findall(r'<g id="axes_\d+"', text)),
        texts=re.findall(r"<!-- (.*?) -->", text),
        ink=ink,
    )


def check(paths, axes: int | None = None, texts: tuple[str, ...] = (), min_ink: float = 0.02) -> Content:
    """A figure written as PNG and SVG that shows ``texts`` (each a substring of some text) on
    ``axes`` plotting areas with at least ``min_ink`` of its pixels drawn; returns its content."""
    paths = [Path(p) for p in paths]
    assert [p.suffix for p in paths] == [".png", ".svg"], paths
    content = read(paths[0])
    assert content.ink >= min_ink, f"{paths[0]}: {content.ink:.1%} of the pixels drawn"
    if axes is not None:
        assert content.axes == axes, f"{paths[0]}: {content.axes} axes, expected {axes}"
    missing = [t for t in texts if not any(t in s for s in content.texts)]
    assert not missing, f"{paths[0]}: no text {missing} among {content.texts}"
    return content
