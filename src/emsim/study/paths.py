"""Every result path of a study, defined once: used by :mod:`emsim.study.experiments` and the rule files.

Templates name their wildcards as the rules do; the ``*_path`` functions fill them from values
(learning rates written with ``:g``). Each job's log and benchmark sit under ``results/logs`` and
``results/benchmarks`` at the path of its output, without the extension.
"""

from __future__ import annotations

from emsim.study import settings

RESULTS = "results"
STRUCTURES = "results/structures/{set}/shard{shard}.h5"
EXIT_WAVES = "results/exit_waves/{set}/shard{shard}.h5"
FFTW_WISDOM = "results/exit_waves/fftw_wisdom.npz"
DATASET = "results/datasets/{domain}.h5"
PRETRAIN = "results/models/pretrain/{source}/lr{lr}_seed{seed}.pt"
TRANSFER = "results/models/{experiment}/transfer/{source}/{target}/{method}_n{size}_lr{lrs}_seed{seed}.pt"
BASELINE = "results/models/{experiment}/baseline/{pair}/mix{mix}_lr{lr}_seed{seed}.pt"
BATCHES = {  # stage -> the record of one training batch (its models sit beside it)
    settings.PRETRAIN: "results/models/pretrain/{source}/batch{index}.json",
    settings.TRANSFER: "results/models/{experiment}/transfer/{source}/{target}/batch{index}.json",
    settings.BASELINE: "results/models/{experiment}/baseline/{pair}/batch{index}.json",
}
EVALUATION = "results/evaluation/{experiment}/{group}.json"
REPORT_TABLE = "results/report/{experiment}/table"  # the table job's log and benchmark stem
REPORT_PARQUET = "results/report/{experiment}/models.parquet"
REPORT_CSV = "results/report/{experiment}/models.csv"
REPORT_FIGURES = "results/report/{experiment}/figures"


def log(template: str) -> str:
    """The log file of the job whose output (or :data:`REPORT_TABLE`) is ``template``."""
    return f"{RESULTS}/logs/{_stem(template)}.log"


def benchmark(template: str) -> str:
    """The benchmark (timing) file of the job whose output is ``template``."""
    return f"{RESULTS}/benchmarks/{_stem(template)}.tsv"


def _stem(template: str) -> str:
    name = template.removeprefix(f"{RESULTS}/")
    head, _, tail = name.rpartition("/")
    return f"{head}/{tail.split('.')[0]}" if head else tail.split(".")[0]


def dataset_path(domain: str) -> str:
    return DATASET.format(domain=domain)


def pretrain_path(source: str, lr: float, seed: int) -> str:
    return PRETRAIN.format(source=source, lr=f"{lr:g}", seed=seed)


def transfer_path(experiment, source, target, method, size, lrs, seed) -> str:
    """``method``: :func:`emsim.learning.methods.label` (a finetune run's frozen part, as before methods)."""
    return TRANSFER.format(
        experiment=experiment,
        source=source,
        target=target,
        method=method,
        size=size,
        lrs=f"{lrs[0]:g}-{lrs[1]:g}",
        seed=seed,
    )


def baseline_path(experiment, pair, mix, lr, seed) -> str:
    return BASELINE.format(
        experiment=experiment, pair=f"{pair[0]}+{pair[1]}", mix=f"{mix[0]}-{mix[1]}", lr=f"{lr:g}", seed=seed
    )


def batch_path(group: str, index: int, experiment: str | None = None) -> str:
    """The record of training batch ``index`` of an evaluation group (``pretrain/<source>``: study-wide)."""
    stage, _, rest = group.partition("/")
    if stage == settings.PRETRAIN:
        return BATCHES[settings.PRETRAIN].format(source=rest, index=index)
    return f"{RESULTS}/models/{experiment}/{group}/batch{index}.json"


def evaluation_path(experiment: str, group: str) -> str:
    return EVALUATION.format(experiment=experiment, group=group)
