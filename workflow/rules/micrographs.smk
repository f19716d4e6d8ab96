# A domain made of micrograph files: read, resampled to the study's pixel size, tiled, split by file.
# Its inputs are the files themselves: editing, adding or removing one reruns this domain alone.


rule micrograph_dataset:
    input:
        micrograph_files,
    output:
        paths.DATASET,
    log:
        paths.log(paths.DATASET),
    benchmark:
        paths.benchmark(paths.DATASET)
    wildcard_constraints:
        domain=domain_names(micrograph=True),
    conda:
        CONDA_ENV
    threads: threads_of("dataset")
    resources:
        **resources_of("dataset"),
    params:
        domain=lambda wc: emsim_config.domain_slice(STUDY, wc.domain),
    script:
        "../scripts/micrograph_dataset.py"
