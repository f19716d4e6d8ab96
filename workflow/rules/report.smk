# The per-model table and the figures of each experiment (small, local jobs).


rule report_table:
    input:
        evaluation_paths,
    output:
        parquet="results/report/{experiment}/models.parquet",
        csv=report(
            "results/report/{experiment}/models.csv",
            caption="../report/table.rst",
            category="{experiment}",
            labels={"table": "per-model table"},
        ),
    params:
        domain_values=series_values,
    log:
        "results/logs/report/{experiment}/table.log",
    benchmark:
        "results/benchmarks/report/{experiment}/table.tsv"
    conda:
        "../../envs/emsim.yaml"
    script:
        "../scripts/report_table.py"


rule report_figures:
    input:
        table="results/report/{experiment}/models.parquet",
        evaluations=evaluation_paths,
        datasets=lambda wc: [dataset_path(d) for d in EXPERIMENTS[wc.experiment].domains],
    output:
        report(
            directory("results/report/{experiment}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="{experiment}",
        ),
    params:
        domains=lambda wc: EXPERIMENTS[wc.experiment].domains,
        domain_values=series_values,
        parameter_label=lambda wc: emsim_config.sweep_label(STUDY, EXPERIMENTS[wc.experiment].domains),
        device=STUDY["training"]["device"],
    log:
        "results/logs/report/{experiment}/figures.log",
    benchmark:
        "results/benchmarks/report/{experiment}/figures.tsv"
    conda:
        "../../envs/emsim.yaml"
    resources:
        mem_mb=resources_of("evaluation")["mem_mb"],
    script:
        "../scripts/report_figures.py"
