"""Snakemake adapter: one pretraining, transfer or single-stage baseline run (by rule name)."""

import torch

from emsim import io
from emsim.learning import train

io.log_to_file(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
torch.backends.cudnn.benchmark = True  # fixed image sizes: let cuDNN pick its fastest kernels
p, out = snakemake.params, snakemake.output[0]
cfg = {**p.training, "lr": p.lr}
device = cfg.pop("device", "auto")
if snakemake.rule == "pretrain":
    train.pretrain(snakemake.input[0], out, cfg, seed=p.seed, device=device)
elif snakemake.rule == "transfer":
    train.transfer(
        snakemake.input.pretrained[0] if snakemake.input.pretrained else None,  # none for scratch
        snakemake.input.datasets[0],
        out,
        cfg,
        freeze=p.freeze,
        size=p.size,
        seed=p.seed,
        device=device,
        method=p.method,
    )
else:
    train.baseline(tuple(snakemake.input), tuple(p.mix), out, cfg, seed=p.seed, device=device)
