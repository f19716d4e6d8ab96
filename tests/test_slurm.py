"""The tiny study through `snakemake --profile slurm` on a real single-node Slurm cluster.

The cluster (tests/slurm_cluster.py) has partitions `cpu` and `gpu` (one fake GPU), the names
slurm/partitions.yaml uses, so the profile runs unchanged; the only test overrides are the node's
CPU count (`--cores`) and a short first status check. Asserts that every non-local job went
through Slurm, that GPU rules asked for a GPU on the gpu partition and CPU rules for none on the
cpu partition, that the profile's groups were formed, and that the results equal a local run's.
"""

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yte
from slurm_cluster import SlurmUnavailable, running_cluster

from emsim.study import paths

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "config" / "test.yaml"
PROFILE = ROOT / "slurm" / "config.yaml"
TABLE = "results/report/defocus/models.csv"
WISDOM = "results/exit_waves/fftw_wisdom.npz"
DATASETS = ("results/datasets/df-10.h5", "results/datasets/df10.h5")
GPU_RULES = {*paths.BATCHES, "evaluate"}  # the training rules (one per stage) and the evaluation
CPU_RULES = {"structures", "exit_waves", "domain_dataset"}  # at least these (more may come)
LOCAL_RULES = {"report_table", "report_figures", "datasets", "all"}
TIMEOUT_S = 420

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm cluster for the session; skipped where it cannot be had."""
    try:
        with running_cluster() as cluster:
            yield cluster
    except SlurmUnavailable as reason:
        pytest.skip(f"no Slurm cluster: {reason}")


class Snakemake:
    """A snakemake run started from the repository root (as users do) with results in ``workdir``.

    Wrapped in `timeout -s INT`: a status poll that never ends must not hang the test suite
    (snakemake ignores SIGTERM there; SIGINT stops it and cancels its Slurm jobs).
    """

    def __init__(self, workdir: Path, *args: str):
        src = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
        command = [
            "timeout",
            "-s",
            "INT",
            str(TIMEOUT_S),
            sys.executable,
            "-m",
            "snakemake",
            "-d",
            str(workdir),
            *args,
            "--configfile",
            str(STUDY),
        ]
        self.log = workdir.with_suffix(".log")  # a file, not a pipe: nobody reads while it runs
        self.started = time.perf_counter()
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, env={**os.environ, "PYTHONPATH": src}, stdout=out, stderr=subprocess.STDOUT
            )

    def wait(self) -> tuple[str, float]:
        """(output, wall seconds) once it finished successfully."""
        self.proc.wait()
        output = self.log.read_text()
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{output[-5000:]}"
        return output, time.perf_counter() - self.started


def profile_groups() -> dict[str, str]:
    """rule -> group name, as slurm/config.yaml sets them."""
    with PROFILE.open() as stream:
        return yte.process_yaml(stream, require_use_yte=True).get("groups", {})


def rules_of(comment: str, groups: dict[str, str]) -> tuple[str | None, list[str]]:
    """(group or None, rule names) of a Slurm job from the comment the slurm plugin gives it.

    Single job: ``rule_<rule>`` or ``rule_<rule>_wildcards_<...>``;
    group job: ``rule_<group>_<rule>[_<rule>...]``; ``groups`` maps rule -> group name.
    """
    assert comment.startswith("rule_"), comment
    name = comment.removeprefix("rule_").split("_wildcards_")[0]
    for group in set(groups.values()):
        if name.startswith(f"{group}_"):
            members = name.removeprefix(f"{group}_")
            return group, [rule for rule, g in groups.items() if g == group and rule in members]
    return None, [name]


def slurm_jobs_of(cluster, workdir: Path) -> list[dict[str, str]]:
    """The Slurm jobs whose working directory is ``workdir`` (MinJobAge keeps finished ones)."""
    return [job for job in cluster.jobs() if Path(job.get("WorkDir", "")) == workdir]


def gpus_requested(job: dict[str, str]) -> bool:
    tres = ",".join(job.get(key, "") for key in ("TresPerJob", "TresPerNode", "TresPerTask", "TRES"))
    return "gpu" in tres


def assert_routed(
    jobs: list[dict[str, str]], gpu_rules: set[str], groups: dict[str, str]
) -> dict[str, list[str | None]]:
    """Every job COMPLETED; GPU rules on `gpu` with a GPU, all other rules on `cpu` without one.

    Returns rule -> groups its Slurm jobs belonged to (None for an ungrouped job).
    """
    seen: dict[str, list[str | None]] = {}
    for job in jobs:
        group, rules = rules_of(job["Comment"], groups)
        assert rules, job["Comment"]
        assert job["JobState"] == "COMPLETED", (job["Comment"], job["JobState"])
        for rule in rules:
            seen.setdefault(rule, []).append(group)
        if set(rules) & gpu_rules:
            assert job["Partition"] == "gpu" and gpus_requested(job), job
        else:
            assert job["Partition"] == "cpu" and not gpus_requested(job), job
    return seen


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_tables_equal(slurm: pd.DataFrame, local: pd.DataFrame) -> None:
    """Same rows and numbers (timings and peak memory excepted: they measure the machine, not the result)."""
    timing = [c for c in local.columns if "time" in c.lower() or "memory" in c.lower()]
    key = [c for c in local.columns if local[c].dtype == object]
    slurm = slurm.drop(columns=timing).sort_values(key).reset_index(drop=True)
    local = local.drop(columns=timing).sort_values(key).reset_index(drop=True)
    assert list(slurm.columns) == list(local.columns)
    pd.testing.assert_frame_equal(slurm, local, check_exact=False, rtol=1e-6, atol=1e-9)


def test_tiny_study_on_slurm_routes_jobs_and_matches_local_run(slurm_cluster, tmp_path):
    node_cpus = slurm_cluster.node()["CPUTot"]
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    # Byte equality needs the same FFTW plans in both runs: plan once, share the wisdom file.
    Snakemake(local_dir, WISDOM, "--cores", "1").wait()
    (slurm_dir / WISDOM).parent.mkdir(parents=True)
    shutil.copy2(local_dir / WISDOM, slurm_dir / WISDOM)
    local = Snakemake(local_dir, TABLE, "--cores", node_cpus)  # alongside: the Slurm run mostly waits
    output, slurm_s = Snakemake(
        slurm_dir,
        TABLE,
        "--profile",
        "slurm",
        "--cores",
        node_cpus,  # CPUs of the test node (the profile's cores: 16 would not fit)
        "--slurm-init-seconds-before-status-checks",
        "2",  # the tiny jobs end in seconds
    ).wait()
    local.wait()
    assert "Using profile slurm" in output

    jobs = slurm_jobs_of(slurm_cluster, slurm_dir)
    groups = profile_groups()
    seen = assert_routed(jobs, GPU_RULES, groups)
    assert set(seen) >= GPU_RULES | CPU_RULES, f"rules that went through Slurm: {sorted(seen)}"
    assert not set(seen) & LOCAL_RULES, f"local rules went through Slurm: {sorted(seen)}"
    for rule, group in groups.items():  # each grouped rule travelled in its group
        assert set(seen[rule]) == {group}, (rule, seen[rule])

    for path in DATASETS:
        assert sha256(slurm_dir / path) == sha256(local_dir / path), path
    assert_tables_equal(pd.read_csv(slurm_dir / TABLE), pd.read_csv(local_dir / TABLE))
    log.info("tiny study through Slurm: %.0f s, %d Slurm jobs", slurm_s, len(jobs))


def test_gpu_model_goes_to_the_gpu_rules_only(monkeypatch):
    monkeypatch.setenv("EMSIM_SLURM_GPU_MODEL", "a100")
    with PROFILE.open() as stream:
        rendered = yte.process_yaml(stream, require_use_yte=True)
    assert rendered["set-resources"] == {rule: {"gpu_model": "a100"} for rule in GPU_RULES}
    monkeypatch.delenv("EMSIM_SLURM_GPU_MODEL")
    with PROFILE.open() as stream:
        assert "set-resources" not in yte.process_yaml(stream, require_use_yte=True)
