"""A real single-node Slurm cluster on loopback, for tests and CI.

``running_cluster()`` installs the Debian packages if needed (``slurmctld slurmd
slurm-client munge``), writes ``/etc/slurm/slurm.conf`` and ``gres.conf`` (partitions ``cpu``
and ``gpu``, one fake GPU), starts ``munged`` (as user munge), ``slurmctld`` and
``slurmd -N localhost`` as plain background daemons (no systemd), waits until the node is idle
and, on exit, stops exactly the daemons it started (by the PIDs in their pid files) and removes
the configuration it wrote: a leftover ``slurm.conf`` makes every snakemake call wait ~9 s for a
controller that is gone.

The configuration is read from ``../shared/notes/slurm-ci`` beside the repository root (the
measured, working one); an embedded copy is used where that directory is absent.

Needs root and apt-get; ``SlurmUnavailable`` says why it cannot run (tests skip on it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CONF_DIR = REPO_ROOT.parent / "shared" / "notes" / "slurm-ci"
ETC_SLURM = Path("/etc/slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PID = Path("/run/munge/munged.pid")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")

# Embedded copy of ../shared/notes/slurm-ci (used only where that directory is absent).
EMBEDDED_SLURM_CONF = """\
# Minimal single-node Slurm 22.05 cluster on loopback (Debian 12 packages)
ClusterName=ci
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
DefMemPerCPU=1000
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
SlurmdTimeout=300
MpiDefault=none
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=16000 Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
EMBEDDED_GRES_CONF = """\
AutoDetect=off
NodeName=localhost Name=gpu Type=fake Count=1 File=/dev/zero
"""


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or run on this machine; the message says why."""


def ensure_installed() -> None:
    """Install the Slurm and munge Debian packages unless ``slurmctld`` is already there."""
    if shutil.which("slurmctld") and shutil.which("munged") and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable("Slurm is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or shutil.which("slurmctld") is None:
        raise SlurmUnavailable(f"`{' '.join(install)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def read_conf_templates(source_dir: Path = SHARED_CONF_DIR) -> tuple[str, str]:
    """Text of slurm.conf and gres.conf from ``source_dir``, else the embedded copies."""
    slurm_conf, gres_conf = source_dir / "slurm.conf", source_dir / "gres.conf"
    if slurm_conf.is_file() and gres_conf.is_file():
        return slurm_conf.read_text(), gres_conf.read_text()
    log.info("%s not found: using the embedded Slurm configuration", source_dir)
    return EMBEDDED_SLURM_CONF, EMBEDDED_GRES_CONF


def fit_node_to_machine(slurm_conf: str) -> str:
    """Lower the node's CPUs/RealMemory to what this machine has (else slurmd drains it)."""
    cpus = os.cpu_count() or 1
    meminfo = Path("/proc/meminfo").read_text()
    mem_mb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1)) // 1024 * 9 // 10

    def lower(match: re.Match, have: int) -> str:
        return f"{match.group(1)}{min(int(match.group(2)), have)}"

    out = []
    for line in slurm_conf.splitlines(keepends=True):
        if line.startswith("NodeName="):
            line = re.sub(r"(\bCPUs=)(\d+)", lambda m: lower(m, cpus), line)
            line = re.sub(r"(\bRealMemory=)(\d+)", lambda m: lower(m, mem_mb), line)
        out.append(line)
    return "".join(out)


def conf_value(slurm_conf: str, key: str) -> str:
    """Value of ``key=`` in slurm.conf text (first match)."""
    match = re.search(rf"^{key}=(\S+)", slurm_conf, flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"slurm.conf has no {key}= line")
    return match.group(1)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (daemons may be reparented to a non-reaping init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _wait_for(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def parse_scontrol_record(line: str) -> dict[str, str]:
    """``Key=Value Key=Value ...`` (one ``scontrol -o show`` line) as a dict."""
    fields = re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
    return dict(field.split("=", 1) for field in fields if "=" in field)


class SlurmCluster:
    """Single-node Slurm cluster whose daemons this object starts and stops."""

    def __init__(self, conf_source_dir: Path = SHARED_CONF_DIR, start_timeout_s: float = 60):
        self.conf_source_dir = conf_source_dir
        self.start_timeout_s = start_timeout_s
        self.started_pid_files: list[Path] = []  # in start order
        self.written_files: dict[Path, str | None] = {}  # path -> previous content
        self.slurm_conf = ""

    # -- start ---------------------------------------------------------------------------
    def start(self) -> None:
        """Write the configuration, start munged, slurmctld, slurmd; wait for an idle node."""
        ensure_installed()
        slurm_conf, gres_conf = read_conf_templates(self.conf_source_dir)
        self.slurm_conf = fit_node_to_machine(slurm_conf)
        try:
            self._write(ETC_SLURM / "slurm.conf", self.slurm_conf)
            self._write(ETC_SLURM / "gres.conf", gres_conf)
            for key in ("StateSaveLocation", "SlurmdSpoolDir"):
                Path(conf_value(self.slurm_conf, key)).mkdir(parents=True, exist_ok=True)
            for key in ("SlurmctldPidFile", "SlurmctldLogFile"):
                Path(conf_value(self.slurm_conf, key)).parent.mkdir(parents=True, exist_ok=True)
            self._start_munged()
            self._start_daemon(["slurmctld", "-c"], Path(conf_value(self.slurm_conf, "SlurmctldPidFile")))
            self._start_daemon(["slurmd", "-N", "localhost"], Path(conf_value(self.slurm_conf, "SlurmdPidFile")))
            if not _wait_for(self.node_idle, self.start_timeout_s, 0.5):
                raise RuntimeError(
                    f"Slurm node not idle after {self.start_timeout_s} s:\n"
                    f"{self._run(['scontrol', 'show', 'node'], check=False)}\n{self._log_tails()}"
                )
        except BaseException:
            self.stop()
            raise

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = path.read_text() if path.exists() else None
        self.written_files.setdefault(path, previous)
        path.write_text(text)

    def _start_munged(self) -> None:
        pid = _read_pid(MUNGE_PID)
        if pid is not None and _pid_alive(pid):
            log.info("munged already runs (pid %d): using it, not stopping it", pid)
            return
        if not MUNGE_KEY.exists():
            self._run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)])
        MUNGE_PID.parent.mkdir(parents=True, exist_ok=True)
        for path in (MUNGE_KEY, MUNGE_PID.parent):
            shutil.chown(path, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
        self._start_daemon(["munged"], MUNGE_PID, user="munge")

    def _start_daemon(self, argv: list[str], pid_file: Path, user: str | None = None) -> None:
        pid = _read_pid(pid_file)
        if pid is not None and _pid_alive(pid):
            raise RuntimeError(
                f"{argv[0]} already runs (pid {pid} in {pid_file}) but was not started here: stop that cluster first"
            )
        pid_file.unlink(missing_ok=True)
        proc = subprocess.run(argv, user=user, capture_output=True, text=True)  # forks, returns
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}\n{self._log_tails()}")
        if not _wait_for(lambda: _read_pid(pid_file) is not None, 10):
            raise RuntimeError(f"{argv[0]} wrote no pid file {pid_file}\n{self._log_tails()}")
        self.started_pid_files.append(pid_file)
        log.info("started %s (pid %d)", argv[0], _read_pid(pid_file))

    def node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.split() and set(proc.stdout.split()) == {"idle"}

    # -- use -----------------------------------------------------------------------------
    def node(self) -> dict[str, str]:
        """``scontrol show node`` of the single node, as a dict (e.g. ``CPUTot``, ``Gres``)."""
        return parse_scontrol_record(self._run(["scontrol", "-o", "show", "node", "localhost"]))

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones stay for MinJobAge), as dicts."""
        out = self._run(["scontrol", "-o", "show", "job"])
        return [parse_scontrol_record(line) for line in out.splitlines() if line.startswith("JobId=")]

    # -- stop ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel leftover jobs, stop the daemons started here, restore the files written here."""
        if self.started_pid_files:
            self._cancel_jobs()
        for pid_file in reversed(self.started_pid_files):
            pid = _read_pid(pid_file)
            if pid is None or not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            if not _wait_for(lambda: not _pid_alive(pid), 15):
                log.warning("pid %d (%s) ignored SIGTERM: SIGKILL", pid, pid_file)
                os.kill(pid, signal.SIGKILL)
                _wait_for(lambda: not _pid_alive(pid), 5)
        self.started_pid_files.clear()
        for path, previous in self.written_files.items():
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(previous)
        self.written_files.clear()

    def _cancel_jobs(self) -> None:
        proc = subprocess.run(
            ["squeue", "-h", "-o", "%i", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        ids = proc.stdout.split() if proc.returncode == 0 else []
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
            _wait_for(
                lambda: (
                    not subprocess.run(
                        ["squeue", "-h", "-o", "%i", "--states=RUNNING,COMPLETING"], capture_output=True, text=True
                    ).stdout.strip()
                ),
                20,
                0.5,
            )

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _run(argv: list[str], check: bool = True) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc.stdout + proc.stderr

    def _log_tails(self, lines: int = 15) -> str:
        logs = [Path("/var/log/munge/munged.log")]
        for key in ("SlurmctldLogFile", "SlurmdLogFile"):
            try:
                logs.append(Path(conf_value(self.slurm_conf, key)))
            except ValueError:
                continue
        parts = []
        for path in logs:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)


@contextmanager
def running_cluster(conf_source_dir: Path = SHARED_CONF_DIR) -> Iterator[SlurmCluster]:
    """A started ``SlurmCluster``; stopped (and its files removed) on exit."""
    cluster = SlurmCluster(conf_source_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
