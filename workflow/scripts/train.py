"""Snakemake adapter: one training batch (pretraining, transfer or single-stage baselines)."""

import torch

from emsim import io
from emsim.learning import batch

io.log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick its fastest kernels
cfg = dict(snakemake.params.training)
device = cfg.pop("device", "auto")
batch.train_batch(snakemake.params.models, cfg, snakemake.output[0], device=device)
