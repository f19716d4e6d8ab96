"""Real snakemake runs of the repository's Snakefile, for the workflow tests."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def snakemake_command(workdir: Path, *args: str, config: dict | None = None) -> list[str]:
    """The snakemake command line for the repository's Snakefile in ``workdir`` (writes ``config``)."""
    if config is not None:
        (workdir / "study.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakefile, study = str(ROOT / "Snakefile"), str(workdir / "study.yaml")
    return [sys.executable, "-m", "snakemake", "-s", snakefile, "-d", str(workdir), "--configfile", study, *args]


def snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 900) -> str:
    """Run snakemake on the repository's Snakefile in ``workdir``; return its output."""
    command = snakemake_command(workdir, *args, config=config)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def scheduled(output: str) -> dict[str, int]:
    """Job counts per rule from a dry run's 'Job stats' table."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:")[1].split("\n\n")[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}
