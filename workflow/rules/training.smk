# Pretraining (shared by every transfer run that starts from it), transfer, single-stage baselines.
# Model files are named by their grid point; params come from the grid entry (emsim.study.experiments).

TRAINING = emsim_config.normalized(STUDY.get("training", {}))


rule pretrain:
    input:
        grid(paths.PRETRAIN, "datasets"),
    output:
        paths.PRETRAIN,
    log:
        paths.log(paths.PRETRAIN),
    benchmark:
        paths.benchmark(paths.PRETRAIN)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training"),
    params:
        training=TRAINING,
        lr=grid(paths.PRETRAIN, "lr"),
        seed=grid(paths.PRETRAIN, "seed"),
    script:
        "../scripts/train.py"


rule transfer:
    input:
        pretrained=grid(paths.TRANSFER, "pretrained_inputs"),
        datasets=grid(paths.TRANSFER, "datasets"),
    output:
        paths.TRANSFER,
    log:
        paths.log(paths.TRANSFER),
    benchmark:
        paths.benchmark(paths.TRANSFER)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training"),
    params:
        training=TRAINING,
        lr=grid(paths.TRANSFER, "lr"),
        seed=grid(paths.TRANSFER, "seed"),
        freeze=grid(paths.TRANSFER, "freeze"),
        method=grid(paths.TRANSFER, "method"),
        size=grid(paths.TRANSFER, "size"),
    script:
        "../scripts/train.py"


rule baseline:
    input:
        grid(paths.BASELINE, "datasets"),
    output:
        paths.BASELINE,
    log:
        paths.log(paths.BASELINE),
    benchmark:
        paths.benchmark(paths.BASELINE)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training"),
    params:
        training=TRAINING,
        lr=grid(paths.BASELINE, "lr"),
        seed=grid(paths.BASELINE, "seed"),
        mix=grid(paths.BASELINE, "mix"),
    script:
        "../scripts/train.py"
