"""Snakemake adapter: one training batch (pretraining, transfer or single-stage baselines)."""

import dataclasses

import torch

from emsim import extensions, io
from emsim.learning import batch
from emsim.study.settings import Training

io.log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
for path in snakemake.params.extensions:  # transfer methods a study registers
    extensions.load(path)
torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick its fastest kernels
training = Training.from_dict(snakemake.params.training)
# where the job trains is not part of a model's identity: its files record device auto
batch.train_batch(
    snakemake.params.models, dataclasses.replace(training, device="auto"), snakemake.output[0], device=training.device
)
