"""Snakemake adapter: score one group of models on every domain of its series."""

from emsim import io
from emsim.learning import evaluate
from emsim.study.settings import Instances

io.log_to_file(snakemake.log[0])
p = snakemake.params
models = [{"path": path, "tags": tags} for path, tags in zip(p.models, p.tags)]
datasets = dict(zip(p.domains, snakemake.input.datasets))
records = evaluate.evaluate_models(models, datasets, device=p.device, instances=Instances.from_dict(p.instances))
evaluate.write_evaluation(records, snakemake.output[0])
