# emsim: simulated HRTEM domains -> pretrain/transfer U-Nets -> out-of-distribution evaluation.
# Rules only wire files and resources; all logic lives in src/emsim (see README).
from snakemake.utils import min_version

min_version("9.0")

# The default study, unless a study is given with --configfile (then it replaces this one).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    set=r"[^/]+",
    shard=r"\d+",
    index=r"\d+",
    domain=r"[^/]+",
    experiment=r"[^/]+",
    source=r"[^/]+",
    target=r"[^/]+",


include: "workflow/rules/simulation.smk"
include: "workflow/rules/micrographs.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    datasets,
    report_table,
    report_figures,


rule all:
    default_target: True
    input:
        [dataset_path(d) for d in STUDY.domains],
        [paths.REPORT_CSV.format(experiment=e) for e in EXPERIMENTS],
        [paths.REPORT_FIGURES.format(experiment=e) for e in EXPERIMENTS],


rule datasets:
    input:
        [dataset_path(d) for d in STUDY.domains],
