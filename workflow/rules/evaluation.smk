# Every model scored on the validation split of every domain of its series (auxiliary OOD datasets)
# and on its own target's test split; one job per group of models loads each dataset once.


rule evaluate:
    input:
        models=lambda wc: [m.path for m in evaluation_group(wc)],
        datasets=lambda wc: [dataset_path(d) for d in EXPERIMENTS[wc.experiment].domains],
    output:
        "results/evaluation/{experiment}/{group}.json",
    params:
        tags=lambda wc: [emsim_config.normalized(m.tags) for m in evaluation_group(wc)],
        domains=lambda wc: EXPERIMENTS[wc.experiment].domains,
        device=STUDY["training"]["device"],
    wildcard_constraints:
        group=r"(pretrain|transfer|baseline)/.+",
    log:
        "results/logs/evaluation/{experiment}/{group}.log",
    benchmark:
        "results/benchmarks/evaluation/{experiment}/{group}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("evaluation")["threads"]
    resources:
        mem_mb=resources_of("evaluation")["mem_mb"],
        runtime=resources_of("evaluation")["runtime"],
        gpu=resources_of("evaluation")["gpu"],
    script:
        "../scripts/evaluate.py"
