# Pretraining (shared by every transfer run that starts from it), transfer, single-stage baselines.
# Model files are named by their grid point; params come from the grid entry (emsim.experiments).

TRAINING = emsim_config.normalized(STUDY.get("training", {}))
PRETRAIN = "results/models/pretrain/{source}/lr{lr}_seed{seed}.pt"
TRANSFER = "results/models/{experiment}/transfer/{source}/{target}/{freeze}_n{size}_lr{lrs}_seed{seed}.pt"
BASELINE = "results/models/{experiment}/baseline/{pair}/mix{mix}_lr{lr}_seed{seed}.pt"


rule pretrain:
    input:
        grid(PRETRAIN, "datasets"),
    output:
        PRETRAIN,
    params:
        training=TRAINING,
        lr=grid(PRETRAIN, "lr"),
        seed=grid(PRETRAIN, "seed"),
    log:
        "results/logs/models/pretrain/{source}/lr{lr}_seed{seed}.log",
    benchmark:
        "results/benchmarks/models/pretrain/{source}/lr{lr}_seed{seed}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("training")["threads"]
    resources:
        mem_mb=resources_of("training")["mem_mb"],
        runtime=resources_of("training")["runtime"],
        gpu=resources_of("training")["gpu"],
    script:
        "../scripts/train.py"


rule transfer:
    input:
        pretrained=grid(TRANSFER, "pretrained"),
        datasets=grid(TRANSFER, "datasets"),
    output:
        TRANSFER,
    params:
        training=TRAINING,
        lr=grid(TRANSFER, "lr"),
        seed=grid(TRANSFER, "seed"),
        freeze=grid(TRANSFER, "freeze"),
        size=grid(TRANSFER, "size"),
    log:
        "results/logs/models/{experiment}/transfer/{source}/{target}/{freeze}_n{size}_lr{lrs}_seed{seed}.log",
    benchmark:
        "results/benchmarks/models/{experiment}/transfer/{source}/{target}/{freeze}_n{size}_lr{lrs}_seed{seed}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("training")["threads"]
    resources:
        mem_mb=resources_of("training")["mem_mb"],
        runtime=resources_of("training")["runtime"],
        gpu=resources_of("training")["gpu"],
    script:
        "../scripts/train.py"


rule baseline:
    input:
        grid(BASELINE, "datasets"),
    output:
        BASELINE,
    params:
        training=TRAINING,
        lr=grid(BASELINE, "lr"),
        seed=grid(BASELINE, "seed"),
        mix=grid(BASELINE, "mix"),
    log:
        "results/logs/models/{experiment}/baseline/{pair}/mix{mix}_lr{lr}_seed{seed}.log",
    benchmark:
        "results/benchmarks/models/{experiment}/baseline/{pair}/mix{mix}_lr{lr}_seed{seed}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("training")["threads"]
    resources:
        mem_mb=resources_of("training")["mem_mb"],
        runtime=resources_of("training")["runtime"],
        gpu=resources_of("training")["gpu"],
    script:
        "../scripts/train.py"
