# The per-model table and the figures of each experiment (small, local jobs).


rule report_table:
    input:
        evaluation_paths,
    output:
        parquet=paths.REPORT_PARQUET,
        csv=report(
            paths.REPORT_CSV,
            caption="../report/table.rst",
            category="{experiment}",
            labels={"table": "per-model table"},
        ),
    log:
        paths.log(paths.REPORT_TABLE),
    benchmark:
        paths.benchmark(paths.REPORT_TABLE)
    conda:
        CONDA_ENV
    params:
        domain_values=series_values,
    script:
        "../scripts/report_table.py"


rule report_figures:
    input:
        table=paths.REPORT_PARQUET,
        evaluations=evaluation_paths,
        datasets=lambda wc: [dataset_path(d) for d in EXPERIMENTS[wc.experiment].domains],
    output:
        report(
            directory(paths.REPORT_FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{experiment}",
        ),
    log:
        paths.log(paths.REPORT_FIGURES),
    benchmark:
        paths.benchmark(paths.REPORT_FIGURES)
    conda:
        CONDA_ENV
    resources:
        mem_mb=resources_of("evaluation")["mem_mb"],
    params:
        domains=lambda wc: EXPERIMENTS[wc.experiment].domains,
        domain_values=series_values,
        parameter_label=lambda wc: emsim_config.sweep_label(STUDY, EXPERIMENTS[wc.experiment].domains),
        device=STUDY.training.device,
        instances=emsim_config.normalized(STUDY.instances),
    script:
        "../scripts/report_figures.py"
