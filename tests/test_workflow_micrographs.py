"""Real Snakemake runs of the tiny study with micrograph domains (labelled, box-labelled, unlabelled)."""

import copy
import shutil

import pandas as pd
import pytest
from micrograph_files import write_micrographs
from snakemake_runs import scheduled, snakemake

pytestmark = pytest.mark.workflow


def micrograph_study(tiny_study: dict) -> dict:
    """The tiny study with a labelled, a box-labelled and an unlabelled micrograph domain in its series."""
    study = copy.deepcopy(tiny_study)
    study["domains"] |= {
        "lab": {
            "micrographs": {
                "images": "micro/lab/images/*.png",
                "labels": "micro/lab/masks/{stem}.png",
                "pixel_size_A": 0.5,
                "splits": {"train": 2, "val": 1, "test": 1},
            }
        },
        "box": {
            "micrographs": {
                "images": "micro/box/images/*.png",
                "boxes": "micro/box/boxes/{stem}.txt",
                "pixel_size_A": 0.5,
            }
        },
        "unl": {
            "micrographs": {
                "images": "micro/unl/images/*.png",
                "pixel_size_A": 0.5,
                "splits": {"train": 1, "val": 1, "test": 0},
            }
        },
    }
    study["experiments"]["defocus"] |= {"domains": ["df*", "lab", "box", "unl"], "targets": ["df10", "lab"]}
    study["experiments"]["adapt"] = {  # AdaBN to unlabelled micrographs
        "domains": ["df-10", "unl"],
        "sources": ["df-10"],
        "targets": ["unl"],
        "methods": ["adabn"],
        "transfer_sizes": [8],
        "lr_pairs": [[1.0e-3, 1.0e-4]],
    }
    return study


@pytest.fixture(scope="session")
def micrograph_run(tmp_path_factory, read_tiny_study):
    """The tiny study with micrograph domains, run once end to end."""
    workdir = tmp_path_factory.mktemp("micrographs")
    for i, name in enumerate(("lab", "box", "unl")):
        write_micrographs(workdir / "micro" / name, [f"{name}{j}" for j in range(4)], seed=i)
    snakemake(workdir, "--cores", "2", config=micrograph_study(read_tiny_study()))
    return workdir


def test_micrograph_domains_are_targets_and_evaluation_domains(micrograph_run):
    table = pd.read_csv(micrograph_run / "results/report/defocus/models.csv")
    assert set(table.loc[table["stage"] == "transfer", "target"]) == {"df10", "lab"}
    assert table["val_ce__lab"].notna().all() and table["val_iou__lab"].notna().all()
    for domain in ("box", "unl"):  # no pixel labels: no pixel metrics, but OOD and particle statistics
        assert table[f"val_ce__{domain}"].isna().all()
        assert table[f"val_ood_score__{domain}"].notna().all() and (table[f"val_ood_score__{domain}"] > 0).all()
        assert table[f"val_particle_fraction__{domain}"].between(0, 1).all()
    assert table["val_det_recall__box"].between(0, 1).all() and table["val_det_f1__box"].notna().all()
    assert table["val_det_recall__unl"].isna().all()
    assert (micrograph_run / "results/report/defocus/figures/detection.png").is_file()
    adapted = pd.read_csv(micrograph_run / "results/report/adapt/models.csv").set_index("stage")
    assert adapted.loc["transfer", "method"] == "adabn" and pd.isna(adapted.loc["transfer", "best_val_loss"])
    assert adapted.loc["transfer", "val_ood_score__unl"] != adapted.loc["pretrain", "val_ood_score__unl"]


@pytest.mark.parametrize("edit", ["modify", "add", "remove"])
def test_editing_one_micrograph_reruns_only_its_domain(micrograph_run, tiny_study, tmp_path, edit):
    workdir = tmp_path / "copy"
    shutil.copytree(micrograph_run, workdir, symlinks=True)
    folder = workdir / "micro/box"
    if edit == "modify":
        (folder / "boxes/box0.txt").write_text((folder / "boxes/box0.txt").read_text().split("\n", 1)[1])
    elif edit == "add":
        shutil.copy(folder / "images/box1.png", folder / "images/box9.png")
        shutil.copy(folder / "boxes/box1.txt", folder / "boxes/box9.txt")
    else:
        (folder / "images/box3.png").unlink()
        (folder / "boxes/box3.txt").unlink()
    jobs = scheduled(snakemake(workdir, "-n", config=micrograph_study(tiny_study)))
    assert jobs.pop("micrograph_dataset") == 1 and "domain_dataset" not in jobs
    assert not {"pretrain", "transfer", "baseline"} & set(jobs), "only evaluation reads the box-labelled domain"
    assert jobs.pop("evaluate") >= 1 and set(jobs) <= {"all", "report_table", "report_figures"}
