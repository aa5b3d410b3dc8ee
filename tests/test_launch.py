"""`python -m clipflux.launch`: one process runs the stage script directly, several go through torchrun."""

import subprocess
import sys

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO

from clipflux.launch import command


def test_one_process_runs_the_script_without_torchrun():
    assert command(1, "stages/train.py", ["--x", "1"]) == [sys.executable, "stages/train.py", "--x", "1"]


def test_several_processes_go_through_torchrun():
    """torchrun of this interpreter (not the first `torchrun` on PATH, which a bare `.venv/bin/python` lacks)."""
    assert command(2, "stages/train.py", ["--x"]) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "stages/train.py", "--x"]


def test_zero_processes_is_refused():
    with pytest.raises(SystemExit, match="nproc must be a positive integer, got 0"):
        command(0, "stages/train.py", [])


def test_the_script_replaces_the_launcher(tmp_path):
    """exec: the script runs as the launcher's own process (its pid), with the arguments passed on."""
    script = tmp_path / "s.py"
    script.write_text("import os, sys; print(os.getpid(), sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-m", "clipflux.launch", "1", str(script), "a", "b"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert out.split(maxsplit=1) == [str(proc.pid), "['a', 'b']\n"]


def test_a_launcher_key_error_names_the_key_and_what_is_allowed():
    from clipflux.config import ConfigError, LauncherConfig, from_dict

    with pytest.raises(ConfigError, match=r"launcher.kind: .*'slurm'"):
        from_dict(LauncherConfig, {"kind": "kubernetes"}, "launcher")
    with pytest.raises(ConfigError, match=r"launcher.stages.train.gpus: unknown key; allowed keys here are .*'gpus_per_node'"):
        from_dict(LauncherConfig, {"stages": {"train": {"gpus": 8}}}, "launcher")
    with pytest.raises(ConfigError, match=r"launcher.stages: .*'report'.*allowed|launcher.stages.*'evaluate', 'pretrain', 'train'"):
        from_dict(LauncherConfig, {"stages": {"report": {"nodes": 2}}}, "launcher")


@given(seconds=st.integers(1, 10 * 86400))
def test_a_time_limit_that_yaml_read_as_seconds_is_the_same_limit(seconds):
    """`dvc exp run -S` writes params.yaml back with `time: 1:00:00` unquoted, which PyYAML reads as 3600."""
    from clipflux.config import SlurmConfig, from_dict

    text = from_dict(SlurmConfig, {"time": seconds}, "launcher.slurm").sbatch_time
    hours, minutes, secs = map(int, text.split(":"))
    assert hours * 3600 + minutes * 60 + secs == seconds and minutes < 60 and secs < 60
    assert yaml.safe_load(f"time: {text}")["time"] in (seconds, text)  # unquoted: the same seconds, or the text


def test_a_time_limit_must_be_a_slurm_time_or_seconds():
    from clipflux.config import ConfigError, SlurmConfig, from_dict

    assert from_dict(SlurmConfig, {"time": "1-12:00:00"}, "launcher.slurm").sbatch_time == "1-12:00:00"
    with pytest.raises(ConfigError, match=r"launcher.slurm.time: a Slurm time limit .* got 0"):
        from_dict(SlurmConfig, {"time": 0}, "launcher.slurm")
    with pytest.raises(ConfigError, match=r"launcher.slurm.time: .* got \[1\]"):
        from_dict(SlurmConfig, {"time": [1]}, "launcher.slurm")


def test_a_stage_override_changes_only_that_stages_job():
    from clipflux.config import LauncherConfig, from_dict

    launcher = from_dict(LauncherConfig, {"kind": "slurm", "slurm": {"cpus_per_task": 8, "partition": "gpu"},
                                          "stages": {"train": {"nodes": 4, "gpus_per_node": 8}}}, "launcher")
    train, evaluate = launcher.slurm_for("train"), launcher.slurm_for("evaluate")
    assert (train.nodes, train.gpus_per_node, train.cpus_per_task, train.partition) == (4, 8, 8, "gpu")
    assert (evaluate.nodes, evaluate.gpus_per_node) == (1, 0)


def test_the_batch_script_asks_for_the_resources_and_runs_one_task_per_node(tmp_path):
    from clipflux.config import SlurmConfig
    from clipflux.slurm import batch_script, job_name

    cfg = SlurmConfig(nodes=2, cpus_per_task=16, gpus_per_node=8, time="12:00:00", partition="booster",
                      account="fomo", signal_seconds=300, options=["--qos=high"])
    name = job_name("train", ["--experiment", "lora per task", "--out", "x"])
    assert name == "clipflux-train-lora_per_task"
    script = batch_script(name, cfg, 8, "stages/train.py", ["--experiment", "lora per task"], tmp_path)
    for option in ("--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=16", "--gpus-per-node=8",
                   "--time=12:00:00", "--partition=booster", "--account=fomo", "--signal=B:USR1@300", "--requeue",
                   "--qos=high"):
        assert f"#SBATCH {option}\n" in script
    assert "-m clipflux.launch --node 8 stages/train.py --experiment 'lora per task' &" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert "--signal" not in batch_script(name, SlurmConfig(signal_seconds=0), 1, "s.py", [], tmp_path)


def test_a_multi_node_job_joins_torchruns_rendezvous_at_the_batch_host():
    from clipflux.slurm import node_command

    env = {"SLURM_JOB_NUM_NODES": "4", "SLURM_NODEID": "2", "MASTER_ADDR": "node17", "MASTER_PORT": "20042"}
    cmd = node_command(8, "stages/train.py", ["--x"], env)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nnodes", "4", "--node-rank", "2", "--nproc-per-node", "8",
                       "--master-addr", "node17", "--master-port", "20042", "--max-restarts", "0",
                       "stages/train.py", "--x"]
    assert node_command(8, "stages/train.py", [], {"SLURM_JOB_NUM_NODES": "1"}) is None


def test_without_params_or_with_the_local_launcher_the_stage_runs_here(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import os; print(os.getpid())\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "clipflux.launch", "1", str(script)], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == str(proc.pid)
