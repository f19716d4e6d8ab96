# Every model scored on the validation split of every domain of its series (auxiliary OOD datasets)
# and on its own target's test split; one job per group of models loads each dataset once.


rule evaluate:
    input:
        batches=evaluation_batches,
        datasets=lambda wc: [dataset_path(d) for d in EXPERIMENTS[wc.experiment].domains],
    output:
        paths.EVALUATION,
    log:
        paths.log(paths.EVALUATION),
    benchmark:
        paths.benchmark(paths.EVALUATION)
    wildcard_constraints:
        group=f"({'|'.join(paths.BATCHES)})/.+",
    conda:
        CONDA_ENV
    threads: threads_of("evaluation")
    resources:
        **resources_of("evaluation"),
    params:
        models=lambda wc: [m.path for m in evaluation_group(wc)],
        tags=lambda wc: [emsim_config.normalized(m.tags) for m in evaluation_group(wc)],
        domains=lambda wc: EXPERIMENTS[wc.experiment].domains,
        device=STUDY.training.device,
        instances=emsim_config.normalized(STUDY.instances),
    script:
        "../scripts/evaluate.py"
