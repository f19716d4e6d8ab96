"""Test settings: one BLAS/OpenMP thread per process (2-core CI machines run jobs side by side)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
