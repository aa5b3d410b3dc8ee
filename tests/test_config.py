"""Strict parameter loading: unknown, missing and invalid keys are named in the error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from clipflux.config import ConfigError, load_params
from clipflux.methods import check_params

from conftest import REPO


def _write(tmp_path, mutate) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_shipped_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.world.image_size == 32
    # The default study (README): one method per FiF family with FiF's mixture, the no-replay ablation, and TiC's
    # regimes. A set compared with itself stood here before; this one fails when the study loses an experiment.
    assert set(params.experiments) == {
        "finetune", "lora", "lnfit", "ewc", "ema", "paint", "finetune_no_replay", "tic_oracle", "tic_sequential",
        "tic_cumulative_all", "tic_cumulative_exp", "tic_lwf", "tic_patching"}
    fif = {name: exp for name, exp in params.experiments.items() if exp.stream == "fif_random"}
    assert all(exp.mixture.update == 0.34 for name, exp in fif.items() if name != "finetune_no_replay")
    for exp in params.experiments.values():
        assert exp.stream in params.streams


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["train"].update(sampels_per_task=3), "train.sampels_per_task: unknown key"),
        (lambda p: p["train"].pop("seed"), "train.seed: missing key"),
        (lambda p: p["train"]["optim"].update(lr="fast"), "train.optim.lr: expected float, got 'fast'"),
        (lambda p: p["train"]["optim"].update(batch_size=0), "train.optim.batch_size: must be > 0, got 0"),
        (lambda p: p["world"].update(image_size=100), "world.image_size: 100 is not allowed; choose one of [32, 64, 224]"),
        (lambda p: p["experiments"]["finetune"].update(method="magic"), "experiments.finetune.method: 'magic' is not allowed"),
        (lambda p: p["experiments"]["finetune"].update(stream="nope"), "experiments.finetune.stream: 'nope' is not allowed"),
        (lambda p: p["experiments"]["finetune"]["mixture"].update(update=0.5), "must sum to 1"),
        (lambda p: p.update(extra={}), "extra: unknown key; allowed keys here are"),
        (lambda p: p["methods"].update(finetune={"lr": 1}), "methods.finetune.lr: unknown key"),
        (lambda p: p["train"].update(nproc=3), "train.optim.batch_size: 64 must be divisible by train.nproc (3)"),
        (lambda p: p["pretrain"].update(precision="fp16"), "pretrain.precision: 'fp16' is not allowed; choose one of ['fp32', 'bf16']"),
        (lambda p: p["train"].update(device="tpu"), "train.device: 'tpu' is not allowed"),
    ],
)
def test_bad_params_name_the_key(tmp_path, mutate, expected):
    with pytest.raises(ConfigError) as err:
        check_params(load_params(_write(tmp_path, mutate)))  # the methods' part is checked where they are
    assert expected in str(err.value)


def test_stage_stops_before_work_on_bad_params(tmp_path):
    """A stage script with a bad parameter exits non-zero, names the key, and writes nothing."""
    import subprocess
    import sys

    _write(tmp_path, lambda p: p["world"].update(scale=-1))  # writes tmp_path/params.yaml
    out = tmp_path / "raw"
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "download.py"), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "world.scale: must be > 0, got -1" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("stage, args", [
    ("train", ["--experiment", "finetune", "--shards", "s", "--stream", "s.json", "--base", "b.pt", "--out", "o",
               "--checkpoints", "c"]),
    ("download", ["--out", "o"]),
])
def test_a_stage_reports_a_bad_parameter_in_one_line_and_writes_nothing(tmp_path, stage, args):
    _write(tmp_path, lambda raw: raw["train"].update(threads=0))
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(": error: train.threads: must be > 0, got 0"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
