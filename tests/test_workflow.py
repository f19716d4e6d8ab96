"""Real Snakemake runs of the tiny study: end to end, then what a change reruns (and what it does not)."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import figure_content
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from damage import flip_tensor_byte
from snakemake_runs import ROOT, scheduled, snakemake, snakemake_command

from emsim import data
from emsim.learning import train
from emsim.learning.models import group_of, load_model
from emsim.study import config, experiments
from emsim.study.settings import Training

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, read_tiny_study):
    """The tiny study run once, end to end, with 2 cores."""
    workdir = tmp_path_factory.mktemp("run")
    started = time.perf_counter()
    snakemake(workdir, "--cores", "2", config=read_tiny_study())
    return workdir, time.perf_counter() - started


def test_tiny_study_runs_end_to_end(finished_run):
    workdir, seconds = finished_run
    results = workdir / "results"
    for domain in ("df-10", "df10"):
        path = results / "datasets" / f"{domain}.h5"
        images, labels = data.read_split(path, "train")
        assert images.shape == (4, 64, 64) and labels.shape == (4, 64, 64)
        assert 0.01 < labels.mean() < 0.6, "labels should mark particles, not everything or nothing"
        assert images.std() > 0
    table = pd.read_csv(results / "report/defocus/models.csv")
    assert sorted(table["stage"]) == ["baseline", "pretrain", "transfer", "transfer"]
    figures = list((results / "report/defocus/figures").glob("*.png"))
    for domain in ("df-10", "df10"):  # particles against the scenes' own instances
        assert table[f"val_det_f1__{domain}"].between(0, 1).all() and table[f"val_pq__{domain}"].between(0, 1).all()
    assert (results / "report/defocus/figures/detection.png").is_file()
    assert (results / "report/defocus/figures/size_distribution.png").is_file()
    assert figures and all(figure_content.read(f).ink > 0.01 for f in figures)
    for rule in ("structures", "exit_waves", "datasets", "models", "evaluation"):
        assert list((results / "logs" / rule).rglob("*.log")), f"no log for {rule}"
    assert seconds < 600


@pytest.fixture
def rerun_dir(finished_run, tmp_path):
    """A copy of the finished run (outputs and Snakemake metadata, mtimes kept) to dry-run changes in."""
    workdir = tmp_path / "copy"
    shutil.copytree(finished_run[0], workdir, symlinks=True)
    return workdir


def test_unchanged_config_and_reordered_keys_rerun_nothing(rerun_dir, tiny_study):
    assert scheduled(snakemake(rerun_dir, "-n", config=tiny_study)) == {}
    reordered = {key: tiny_study[key] for key in reversed(list(tiny_study))}
    reordered["microscope"] = dict(reversed(list(tiny_study["microscope"].items())))
    assert scheduled(snakemake(rerun_dir, "-n", config=reordered)) == {}


def test_changing_one_domain_reruns_only_its_dataset_and_what_uses_it(rerun_dir, tiny_study):
    changed = tiny_study
    entry = changed["domains"]["df{mean_nm}"]
    # df-10 stays as it was (same sweep entry); df10 becomes an explicit domain with a lower dose
    changed["domains"] = {"df{mean_nm}": {**entry, "defocus": {"mean_nm": {"values": [-10]}, "sigma_nm": 1.0}}}
    changed["domains"]["df10"] = {**entry, "defocus": {"mean_nm": 10, "sigma_nm": 1.0}, "dose": {"e_per_A2": 50}}
    jobs = scheduled(snakemake(rerun_dir, "-n", config=changed))
    assert jobs.get("domain_dataset") == 1
    assert "structures" not in jobs and "exit_waves" not in jobs, "a domain change must not rerun multislice"
    assert "pretrain" not in jobs, "pretraining on the unchanged df-10 must be kept"
    assert jobs.get("transfer") == 1 and jobs.get("baseline") == 1  # the batches training on df10


def test_changing_a_structure_set_reruns_its_exit_waves_and_domains(rerun_dir, tiny_study):
    changed = tiny_study
    changed["structure_sets"]["au"]["substrate"]["thickness_A"] = [9, 12]
    jobs = scheduled(snakemake(rerun_dir, "-n", config=changed))
    assert jobs["structures"] == 2 and jobs["exit_waves"] == 2 and jobs["domain_dataset"] == 2


@pytest.mark.parametrize(
    "edit",
    [
        lambda study: study["structure_sets"]["au"].update(labels={"blur_A": 1.6}),
        lambda study: study["simulation"].update(zero_defocus_search_A=[-150, 150]),
    ],
)
def test_changing_labels_or_calibration_reruns_exit_waves_not_scenes(rerun_dir, tiny_study, edit):
    changed = tiny_study
    edit(changed)
    jobs = scheduled(snakemake(rerun_dir, "-n", config=changed))
    assert "structures" not in jobs
    assert jobs["exit_waves"] == 2 and jobs["domain_dataset"] == 2


def test_adding_a_domain_schedules_only_the_new_one(rerun_dir, tiny_study):
    changed = tiny_study
    changed["domains"]["lowdose"] = {"structure_set": "au", "defocus": {"mean_nm": -10}, "dose": {"e_per_A2": 20}}
    assert scheduled(snakemake(rerun_dir, "-n", config=changed)) == {"all": 1, "domain_dataset": 1}


def test_seed_study_dry_runs_to_10854_models_in_batches(tmp_path):
    shutil.copy(ROOT / "config/paper.yaml", tmp_path / "study.yaml")
    started = time.perf_counter()
    jobs = scheduled(snakemake(tmp_path, "-n", "--quiet", "rules"))
    seconds = time.perf_counter() - started
    study = config.load(yaml.safe_load((ROOT / "config/paper.yaml").read_text()))
    trained = [m for models in experiments.batches(study).values() for m in models]
    assert sum(m.stage != "pretrain" for m in trained) == 10854 and len(trained) == 10854 + 99
    assert jobs["pretrain"] + jobs["transfer"] + jobs["baseline"] == len(experiments.batches(study)) < 600
    assert jobs["domain_dataset"] == 34
    assert seconds < 20, f"building the seed study's DAG took {seconds:.0f} s"


def test_lint_is_clean(tmp_path, tiny_study):
    output = snakemake(tmp_path, "--lint", config=tiny_study)
    assert "Congratulations" in output or "no lints" in output.lower(), output[-3000:]


def readme_block(name: str, doc: str = "docs/domain-shifts.md") -> str:
    """The code block of ``doc`` between <!-- walkthrough:NAME --> markers."""
    text = (ROOT / doc).read_text()
    block = text.split(f"<!-- walkthrough:{name} -->")[1].split(f"<!-- /walkthrough:{name} -->")[0]
    return block.split("```", 2)[1].split("\n", 1)[1]


def test_readme_walkthrough_adds_only_the_new_domains(rerun_dir, tiny_study):
    (rerun_dir / "my_shifts.py").write_text(readme_block("shift"))
    addition = yaml.safe_load(readme_block("config"))
    changed = tiny_study
    changed["extensions"] = addition["extensions"]
    changed["domains"] |= addition["domains"]
    assert scheduled(snakemake(rerun_dir, "-n", config=changed)) == {"all": 1, "domain_dataset": 2}
    snakemake(rerun_dir, "--cores", "2", "results/datasets/drift2.h5", config=changed)
    meta = data.read_meta(rerun_dir / "results/datasets/drift2.h5")
    assert np.allclose(meta["drift_angle_deg"], 30.0)
    images, _ = data.read_split(rerun_dir / "results/datasets/drift2.h5", "train")
    assert images.std() > 0


def test_walkthrough_registers_a_transfer_method_and_trains_only_its_models(rerun_dir, tiny_study):
    (rerun_dir / "my_methods.py").write_text(readme_block("method", "docs/training.md"))
    changed = tiny_study
    changed["extensions"] = ["my_methods.py"]
    changed["experiments"]["defocus"]["methods"] = ["finetune", {"method": "deep", "depth": 2}]
    jobs = scheduled(snakemake(rerun_dir, "-n", config=changed))
    assert set(jobs) == {"all", "transfer", "evaluate", "report_table", "report_figures"}, jobs
    snakemake(rerun_dir, "--cores", "2", "results/report/defocus/models.parquet", config=changed)
    records = (rerun_dir / "results/models/defocus/transfer").rglob("batch*.json")
    kept = {
        Path(e["path"]).name.split("_n")[0]: e["kept"] for r in records for e in json.loads(r.read_text())["models"]
    }
    assert kept == {"none": True, "encoder": True, "deep-depth2": False}  # only the new models train
    models = sorted((rerun_dir / "results/models/defocus/transfer").rglob("deep-depth2_*.pt"))
    pretrained, _ = load_model(rerun_dir / "results/models/pretrain/df-10/lr0.001_seed0.pt")
    transferred, meta = load_model(models[0])
    changed_groups = {
        group_of(n) for n, p in transferred.named_parameters() if not torch.equal(p, pretrained.get_parameter(n))
    }
    assert changed_groups == {"layer1", "stem"} and meta["method"]["name"] == "deep"
    table = pd.read_parquet(rerun_dir / "results/report/defocus/models.parquet")
    assert "deep" in set(table["method"])


def _kill_after_first_checkpoint(rerun_dir: Path, target: str, ckpt: Path, config: dict) -> None:
    command = snakemake_command(rerun_dir, "--cores", "1", target, config=config)
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # snakemake and its training subprocess
        job.wait()


def test_killed_training_does_not_resume_on_a_rebuilt_dataset(rerun_dir, tiny_study, tmp_path):
    """kill -9 mid-pretraining, change the domain's dose, rerun: the stale checkpoint is discarded."""
    target = "results/models/pretrain/df-10/batch0.json"
    model = rerun_dir / "results/models/pretrain/df-10/lr0.001_seed0.pt"
    ckpt = rerun_dir / "results/models/pretrain/df-10/lr0.001_seed0.pt.ckpt"
    model.unlink()  # a model file of the old run would stay (not a declared output) until replaced
    config = tiny_study
    config["training"]["epochs"] = 8
    _kill_after_first_checkpoint(rerun_dir, target, ckpt, config)
    assert ckpt.exists() and not model.exists(), "the kill must land after the first epoch, before the last"
    config["domains"]["df{mean_nm}"]["dose"]["e_per_A2"] = 100
    snakemake(rerun_dir, "--unlock", config=config)
    snakemake(rerun_dir, "--cores", "1", "--rerun-incomplete", target, config=config)
    log = (rerun_dir / "results/logs/models/pretrain/df-10/batch0.log").read_text()
    assert "the content of input(s) results/datasets/df-10.h5 changed" in log and "resuming" not in log
    weights, meta = load_model(model)
    assert len(meta["history"]) == 8 and not ckpt.exists()
    fresh = tmp_path / "fresh.pt"
    settings = {k: v for k, v in meta["config"].items() if k != "lr"}
    dataset = rerun_dir / "results/datasets/df-10.h5"
    train.pretrain(
        dataset, fresh, Training.with_defaults(**settings), meta["config"]["lr"], seed=meta["seed"], device="cpu"
    )
    a, b = weights.state_dict(), load_model(fresh)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_checkpoint_is_discarded_and_the_model_equals_a_clean_run(rerun_dir, tiny_study, tmp_path):
    """kill -9 mid-pretraining, flip one byte of the checkpoint's weights, rerun: the checkpoint is
    discarded with a warning naming it, and the model equals an uninterrupted run's."""
    target = "results/models/pretrain/df-10/batch0.json"
    model = rerun_dir / "results/models/pretrain/df-10/lr0.001_seed0.pt"
    ckpt = Path(f"{model}.ckpt")
    model.unlink()
    config = tiny_study
    config["training"]["epochs"] = 8
    _kill_after_first_checkpoint(rerun_dir, target, ckpt, config)
    assert ckpt.exists() and not model.exists(), "the kill must land after the first epoch, before the last"
    time.sleep(0.2)  # let an atomic rename in flight settle
    flip_tensor_byte(ckpt, member=2)
    snakemake(rerun_dir, "--unlock", config=config)
    snakemake(rerun_dir, "--cores", "1", "--rerun-incomplete", target, config=config)
    log = (rerun_dir / "results/logs/models/pretrain/df-10/batch0.log").read_text()
    assert f"discarded damaged checkpoint: checkpoint {ckpt.relative_to(rerun_dir)} is damaged" in log
    weights, meta = load_model(model)
    fresh = tmp_path / "fresh.pt"
    settings = {k: v for k, v in meta["config"].items() if k != "lr"}
    train.pretrain(
        rerun_dir / "results/datasets/df-10.h5",
        fresh,
        Training.with_defaults(**settings),
        meta["config"]["lr"],
        seed=meta["seed"],
        device="cpu",
    )
    a, b = weights.state_dict(), load_model(fresh)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_damaged_model_is_retrained_on_a_forced_rerun(rerun_dir, tiny_study):
    target = "results/models/pretrain/df-10/batch0.json"
    model = rerun_dir / "results/models/pretrain/df-10/lr0.001_seed0.pt"
    clean = load_model(model)[0].state_dict()
    flip_tensor_byte(model, member=1)
    snakemake(rerun_dir, "--cores", "1", "--forcerun", "pretrain", "--until", target, config=tiny_study)
    log = (rerun_dir / "results/logs/models/pretrain/df-10/batch0.log").read_text()
    assert f"retraining {model.relative_to(rerun_dir)}: model file" in log and "is damaged" in log
    assert all(torch.equal(clean[k], v) for k, v in load_model(model)[0].state_dict().items())


def test_adding_a_replicate_trains_only_the_new_models(rerun_dir, tiny_study):
    models = sorted((rerun_dir / "results/models").rglob("*.pt"))
    stamps = {m: m.stat().st_mtime_ns for m in models}
    changed = tiny_study
    changed["experiments"]["defocus"]["replicates"] = 2
    snakemake(rerun_dir, "--cores", "2", config=changed)
    assert {m: m.stat().st_mtime_ns for m in models} == stamps, "existing models must be kept, not retrained"
    assert len(list((rerun_dir / "results/models").rglob("*.pt"))) == 2 * len(models)
    logs = "".join(p.read_text() for p in (rerun_dir / "results/logs/models").rglob("batch*.log"))
    assert logs.count(": kept ") == len(models)
