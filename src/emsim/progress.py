"""Progress bars for long command-line work: on stderr, and only when stderr is a terminal (logs
and pipes get none)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(items: Iterable[T], desc: str, unit: str = "file", show: bool = True, leave: bool = True) -> Iterable[T]:
    """``items`` with a tqdm bar named ``desc`` when ``show`` and stderr is a terminal (``leave``:
    keep the finished bar on screen; False for a bar nested in another)."""
    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, leave=leave, disable=not (show and sys.stderr.isatty()))
