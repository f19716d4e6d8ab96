# structure set -> scenes (ASE) -> exit waves (abTEM multislice, cached) -> one dataset per domain.

# Exit waves depend on the beam energy only, unless the zero-defocus calibration (which images
# the particles in vacuum) needs the whole microscope.
EXIT_WAVE_MICROSCOPE = emsim_config.normalized(
    STUDY["microscope"]
    if STUDY["simulation"]["calibrate_zero_defocus"]
    else {"energy_eV": STUDY["microscope"]["energy_eV"]}
)


rule structures:
    output:
        "results/structures/{set}/shard{shard}.h5",
    params:
        spec=lambda wc: emsim_config.normalized(STUDY["structure_sets"][wc.set]),
        cell_A=emsim_optics.cell_A(STUDY["image"]),
        shard_size=STUDY["simulation"]["shard_size"],
    log:
        "results/logs/structures/{set}/shard{shard}.log",
    benchmark:
        "results/benchmarks/structures/{set}/shard{shard}.tsv"
    conda:
        "../../envs/emsim.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../scripts/structures.py"


rule fftw_wisdom:
    output:
        "results/exit_waves/fftw_wisdom.npz",
    params:
        simulation=emsim_config.normalized(STUDY["simulation"]),
        microscope=EXIT_WAVE_MICROSCOPE,
        image=emsim_config.normalized(STUDY["image"]),
    log:
        "results/logs/exit_waves/fftw_wisdom.log",
    benchmark:
        "results/benchmarks/exit_waves/fftw_wisdom.tsv"
    conda:
        "../../envs/emsim.yaml"
    resources:
        gpu=1 if STUDY["simulation"]["device"] == "gpu" else 0,
    script:
        "../scripts/fftw_wisdom.py"


rule exit_waves:
    input:
        scenes="results/structures/{set}/shard{shard}.h5",
        wisdom="results/exit_waves/fftw_wisdom.npz",
    output:
        "results/exit_waves/{set}/shard{shard}.h5",
    params:
        simulation=emsim_config.normalized(STUDY["simulation"]),
        microscope=EXIT_WAVE_MICROSCOPE,
        image=emsim_config.normalized(STUDY["image"]),
        labels=lambda wc: emsim_config.normalized(emsim_config.set_labels(STUDY, wc.set)),
        seed=lambda wc: STUDY["structure_sets"][wc.set]["seed"],
    log:
        "results/logs/exit_waves/{set}/shard{shard}.log",
    benchmark:
        "results/benchmarks/exit_waves/{set}/shard{shard}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("simulation")["threads"]
    resources:
        mem_mb=resources_of("simulation")["mem_mb"],
        runtime=resources_of("simulation")["runtime"],
        gpu=1 if STUDY["simulation"]["device"] == "gpu" else 0,
    script:
        "../scripts/exit_waves.py"


rule domain_dataset:
    input:
        lambda wc: shard_paths("exit_waves", STUDY["domains"][wc.domain]["structure_set"]),
    output:
        "results/datasets/{domain}.h5",
    params:
        domain=lambda wc: emsim_config.domain_slice(STUDY, wc.domain),
    log:
        "results/logs/datasets/{domain}.log",
    benchmark:
        "results/benchmarks/datasets/{domain}.tsv"
    conda:
        "../../envs/emsim.yaml"
    threads: resources_of("dataset")["threads"]
    resources:
        mem_mb=resources_of("dataset")["mem_mb"],
        runtime=resources_of("dataset")["runtime"],
    script:
        "../scripts/domain_dataset.py"
