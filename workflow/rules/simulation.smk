# structure set -> scenes (ASE) -> exit waves (abTEM multislice, cached) -> one dataset per domain.

# Exit waves depend on the beam energy; the lens only where the zero-defocus calibration (which
# images the particles in vacuum) needs it (else None: a lens change reruns no multislice).
CALIBRATION_LENS = emsim_config.normalized(STUDY.microscope) if STUDY.simulation.calibrate_zero_defocus else None
# They need the cell and the pixel grid of the labels, not where the images are downsampled.
EXIT_WAVE_IMAGE = {k: v for k, v in emsim_config.normalized(STUDY.image).items() if k != "downsample"}


rule structures:
    output:
        paths.STRUCTURES,
    log:
        paths.log(paths.STRUCTURES),
    benchmark:
        paths.benchmark(paths.STRUCTURES)
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        spec=lambda wc: emsim_config.scene_spec(STUDY, wc.set),
        cell_A=emsim_optics.cell_A(STUDY.image),
        shard_size=STUDY.simulation.shard_size,
    script:
        "../scripts/structures.py"


rule fftw_wisdom:
    output:
        paths.FFTW_WISDOM,
    log:
        paths.log(paths.FFTW_WISDOM),
    benchmark:
        paths.benchmark(paths.FFTW_WISDOM)
    conda:
        CONDA_ENV
    resources:
        gpu=simulation_gpu(),
    params:
        simulation=emsim_config.normalized(STUDY.simulation),
        energy_eV=STUDY.microscope.energy_eV,
        image=EXIT_WAVE_IMAGE,
    script:
        "../scripts/fftw_wisdom.py"


rule exit_waves:
    input:
        scenes=paths.STRUCTURES,
        wisdom=paths.FFTW_WISDOM,
    output:
        paths.EXIT_WAVES,
    log:
        paths.log(paths.EXIT_WAVES),
    benchmark:
        paths.benchmark(paths.EXIT_WAVES)
    conda:
        CONDA_ENV
    threads: threads_of("simulation")
    resources:
        **resources_of("simulation", gpu=simulation_gpu()),
    params:
        simulation=emsim_config.normalized(STUDY.simulation),
        energy_eV=STUDY.microscope.energy_eV,
        calibration_lens=CALIBRATION_LENS,
        image=EXIT_WAVE_IMAGE,
        labels=lambda wc: emsim_config.normalized(emsim_config.set_labels(STUDY, wc.set)),
        seed=lambda wc: STUDY.structure_sets[wc.set].seed,
    script:
        "../scripts/exit_waves.py"


rule domain_dataset:
    input:
        waves=lambda wc: domain_shard_paths(paths.EXIT_WAVES, wc.domain),
        scenes=lambda wc: domain_shard_paths(paths.STRUCTURES, wc.domain),
    output:
        paths.DATASET,
    log:
        paths.log(paths.DATASET),
    benchmark:
        paths.benchmark(paths.DATASET)
    wildcard_constraints:
        domain=domain_names(micrograph=False),
    conda:
        CONDA_ENV
    threads: threads_of("dataset")
    resources:
        **resources_of("dataset"),
    params:
        domain=lambda wc: emsim_config.domain_slice(STUDY, wc.domain),
    script:
        "../scripts/domain_dataset.py"
