"""A real two-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and two slurmd daemons (n1, n2).

Debian's `slurm-wlm` and `munge` (`.ci/run` installs them). Both nodes are this host, told apart by their ports;
every path of the cluster (state, spool, logs, slurm.conf) is in one temporary folder, and `stop` kills every
daemon it started. Measured facts this follows: DESIGN.md, "Known facts of this environment".
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

NODES = {"n1": 17101, "n2": 17102}
CTLD_PORT = 17100
SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons live in sbin


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=SEARCH)


def available() -> str | None:
    """None when the daemons are installed and this process may start them, else why not."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol") if not _which(b)]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting munged and slurmd needs root"
    return None


def _conf(root: Path, cpus: int) -> str:
    host = socket.gethostname()
    nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={p} CPUs={cpus} State=UNKNOWN"
                      for n, p in NODES.items())
    return f"""ClusterName=clipflux-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
MinJobAge=600
KillWait=5
AuthInfo=cred_expire=10
SlurmctldTimeout=30
SlurmdTimeout=30
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class Cluster:
    """A started cluster: `env` (SLURM_CONF) for the commands that talk to it; `stop()` ends it."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: list[int] = []
        self.munged_pid: int | None = None  # set when this cluster started munged (then `stop` ends it)
        root.mkdir(parents=True, exist_ok=True)
        (root / "state").mkdir(exist_ok=True)
        self.conf.write_text(_conf(root, cpus))

    def start(self) -> "Cluster":
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run([_which("mungekey") or "mungekey", "--create"], check=True, capture_output=True)
        socket_path = Path("/run/munge/munge.socket.2")
        if not socket_path.exists():  # no munged answering: start one (it daemonizes), and wait for its socket
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([_which("munged"), "--force"], check=True, capture_output=True)
            deadline = time.monotonic() + 10
            while not socket_path.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            pid_file = Path("/run/munge/munged.pid")
            self.munged_pid = int(pid_file.read_text()) if pid_file.exists() else None
        self._daemon([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        for node in NODES:
            self._daemon([_which("slurmd"), "-D", "-N", node, "-f", str(self.conf)], f"slurmd-{node}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = self.scontrol("show", "nodes", check=False)
            states = [w.split("=", 1)[1] for w in out.split() if w.startswith("State=")]
            if len(states) == len(NODES) and all(s.startswith("IDLE") for s in states):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Slurm test cluster did not come up within 60 s:\n{out}\n"
                           f"{(self.root / 'slurmctld.log').read_text()[-3000:]}")

    def _daemon(self, cmd: list[str], name: str) -> None:
        log = open(self.root / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pids.append(proc.pid)

    def scontrol(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers, as scontrol's KEY=VALUE fields."""
        out = self.scontrol("show", "jobs", "-o", check=False)
        return [dict(w.split("=", 1) for w in line.split() if "=" in w) for line in out.splitlines()
                if line.startswith("JobId=")]

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True)
        deadline = time.monotonic() + 20  # the jobs' step daemons outlive slurmd: let the cancel reach them first
        while time.monotonic() < deadline and any(j.get("JobState") in ("RUNNING", "COMPLETING", "CONFIGURING")
                                                  for j in self.jobs()):
            time.sleep(0.2)
        for pid in reversed(self.pids):
            try:
                os.killpg(pid, 15)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for pid in self.pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(pid, 9)
                except ProcessLookupError:
                    pass
        self.pids.clear()
        subprocess.run(["pkill", "-f", "slurmstepd: \\[[0-9]"], capture_output=True)  # any a cancel missed
        if self.munged_pid:
            try:
                os.kill(self.munged_pid, 15)
            except ProcessLookupError:
                pass
            self.munged_pid = None
