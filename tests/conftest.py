"""Test settings and the fixtures several test modules share.

One BLAS/OpenMP thread per process (2-core CI machines run jobs side by side).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402 (after the thread settings, before anything loads a BLAS)

import pytest  # noqa: E402
import yaml  # noqa: E402
from synthetic import CFG, LR, bright_disc_domain  # noqa: E402

from emsim.learning import train  # noqa: E402

TINY_STUDY = Path(__file__).resolve().parents[1] / "config" / "test.yaml"


@pytest.fixture(scope="session")
def read_tiny_study():
    """A function that returns the tiny study (config/test.yaml) as a fresh mapping."""
    text = TINY_STUDY.read_text()
    return lambda: yaml.safe_load(text)


@pytest.fixture
def tiny_study(read_tiny_study) -> dict:
    """The tiny study as a mapping of its own: a test may edit it."""
    return read_tiny_study()


@pytest.fixture(scope="session")
def disc_domains(tmp_path_factory) -> dict[str, str]:
    """Two bright-disc datasets: ``a`` (16 train images) to pretrain on, ``b`` (6, inverted
    contrast) to transfer to."""
    root = tmp_path_factory.mktemp("domains")
    return {
        "a": str(bright_disc_domain(root / "a.h5", "a", n_train=16, seed=1)),
        "b": str(bright_disc_domain(root / "b.h5", "b", n_train=6, n_val=3, seed=2, contrast=-40.0)),
    }


@pytest.fixture(scope="session")
def pretrained(disc_domains, tmp_path_factory):
    """(path, metadata) of a U-Net pretrained on ``a`` with the test settings (synthetic.CFG)."""
    out = tmp_path_factory.mktemp("pretrained") / "a.pt"
    return out, train.pretrain(disc_domains["a"], out, CFG, LR, seed=0)


def pytest_collection_modifyitems(items):
    """The modules that run Slurm or Snakemake first (stable otherwise): with ``--dist loadfile
    --no-loadscope-reorder`` pytest-xdist hands modules out in this order, so the longest start
    first and the short ones fill the other workers."""
    items.sort(key=lambda item: (item.get_closest_marker("slurm") is None, item.get_closest_marker("workflow") is None))
