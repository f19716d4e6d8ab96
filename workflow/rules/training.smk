# Pretraining (shared by every transfer run that starts from it), transfer, single-stage baselines.
# One job trains one batch of models sharing their inputs (emsim.study.experiments.batches); its
# declared output is the batch record, the model files are written beside it (emsim.learning.batch).

TRAINING = emsim_config.normalized(STUDY.training)


rule pretrain:
    input:
        batch_inputs(paths.PRETRAIN_BATCH, "datasets"),
    output:
        paths.PRETRAIN_BATCH,
    log:
        paths.log(paths.PRETRAIN_BATCH),
    benchmark:
        paths.benchmark(paths.PRETRAIN_BATCH)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training", runtime=batch_runtime(paths.PRETRAIN_BATCH)),
    params:
        training=TRAINING,
        models=batch_params(paths.PRETRAIN_BATCH),
    script:
        "../scripts/train.py"


rule transfer:
    input:
        pretrained=batch_inputs(paths.TRANSFER_BATCH, "pretrained"),
        datasets=batch_inputs(paths.TRANSFER_BATCH, "datasets"),
    output:
        paths.TRANSFER_BATCH,
    log:
        paths.log(paths.TRANSFER_BATCH),
    benchmark:
        paths.benchmark(paths.TRANSFER_BATCH)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training", runtime=batch_runtime(paths.TRANSFER_BATCH)),
    params:
        training=TRAINING,
        models=batch_params(paths.TRANSFER_BATCH),
    script:
        "../scripts/train.py"


rule baseline:
    input:
        batch_inputs(paths.BASELINE_BATCH, "datasets"),
    output:
        paths.BASELINE_BATCH,
    log:
        paths.log(paths.BASELINE_BATCH),
    benchmark:
        paths.benchmark(paths.BASELINE_BATCH)
    conda:
        CONDA_ENV
    threads: threads_of("training")
    resources:
        **resources_of("training", runtime=batch_runtime(paths.BASELINE_BATCH)),
    params:
        training=TRAINING,
        models=batch_params(paths.BASELINE_BATCH),
    script:
        "../scripts/train.py"
