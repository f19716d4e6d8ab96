# Pretraining (shared by every transfer run that starts from it), transfer, single-stage baselines:
# one rule per stage (emsim.study.paths.BATCHES), one definition. One job trains one batch of
# models sharing their inputs (emsim.study.experiments.batches); its declared output is the batch
# record, the model files are written beside it (emsim.learning.batch).

TRAINING = emsim_config.normalized(STUDY.training)

for stage, batch in paths.BATCHES.items():

    rule:
        name:
            stage
        input:
            pretrained=batch_inputs(batch, "pretrained"),
            datasets=batch_inputs(batch, "datasets"),
        output:
            batch,
        log:
            paths.log(batch),
        benchmark:
            paths.benchmark(batch)
        conda:
            CONDA_ENV
        threads: threads_of("training")
        resources:
            **resources_of("training", runtime=batch_runtime(batch)),
        params:
            training=TRAINING,
            models=batch_params(batch),
            extensions=lambda wc, batch=batch: emsim_config.training_extensions(STUDY, batch_of(batch, wc)),
        script:
            "../scripts/train.py"
