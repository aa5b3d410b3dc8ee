"""The study's shape: TiC's runs from random initialisation, per-stream budgets, and seeds."""

from __future__ import annotations

import pytest
import torch
import yaml

from clipflux.config import ConfigError, ModelConfig, load_params
from clipflux.methods import TaskContext, build_method
from clipflux.models import initial_model

from conftest import REPO

MODEL = ModelConfig("clipflux-tiny")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _context(index: int) -> TaskContext:
    return TaskContext(index=index, num_tasks=3, steps=1, batches=lambda n: iter(()))


def test_a_random_initialisation_is_a_pure_function_of_its_seed():
    first, _ = initial_model(MODEL, 7)
    state = torch.get_rng_state()
    again, _ = initial_model(MODEL, 7)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left as it was
    assert _same(first.state_dict(), again.state_dict())
    assert not _same(first.state_dict(), initial_model(MODEL, 8)[0].state_dict())


@pytest.mark.parametrize("regime", ["oracle", "restart"])
def test_oracle_and_restart_start_every_step_from_the_fresh_initialisation(regime):
    fresh = initial_model(MODEL, 3)[0].state_dict()
    model, _ = initial_model(MODEL, 3)
    method = build_method(regime, None)
    method.setup(model)
    for task in range(3):
        method.begin_task(_context(task))
        assert _same(model.state_dict(), fresh), f"{regime} step {task} does not start from the initialisation"
        with torch.no_grad():  # what training the step does to the weights
            for p in model.parameters():
                p.add_(0.01)
        method.end_task(_context(task))
        assert not _same(model.state_dict(), fresh)


def test_oracle_trains_t_times_the_per_step_budget():
    oracle, sequential = build_method("oracle", None), build_method("sequential", None)
    assert [oracle.steps_for_task(t, 10) for t in range(4)] == [10, 20, 30, 40]
    assert [sequential.steps_for_task(t, 10) for t in range(4)] == [10, 10, 10, 10]


def test_the_shipped_study_runs_tic_from_scratch_and_fif_with_its_default_mixture():
    params = load_params(REPO / "params.yaml")
    tic = {n: e for n, e in params.experiments.items() if e.stream == "tic"}
    fif = {n: e for n, e in params.experiments.items() if e.stream != "tic"}
    assert {e.method for e in tic.values()} >= {"oracle", "sequential", "cumulative_all", "lwf", "patching"}
    assert all(e.init == "scratch" for e in tic.values())
    with_mixture = [e for e in fif.values() if (e.mixture.update, e.mixture.buffer, e.mixture.pretraining)
                    == (0.34, 0.33, 0.33)]
    # Every FiF method runs with FiF's default mixture; one full finetuning run on new data only.
    assert {e.method for e in with_mixture} == {e.method for e in fif.values()}
    assert [e.method for e in fif.values() if e.mixture.update == 1.0] == ["finetune"]
    assert params.study.seeds == 1


def _load(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda p: p["study"].update(seeds=0), "study.seeds: must be > 0, got 0"),
    (lambda p: p["study"].update(runs=2), "study.runs: unknown key; allowed keys here are ['seeds']"),
    (lambda p: p["experiments"]["tic_oracle"].update(init="random"),
     "experiments.tic_oracle.init: 'random' is not allowed; choose one of ['base', 'scratch']"),
    (lambda p: p["streams"]["tic"].update(samples_per_task=0), "streams.tic.samples_per_task: must be > 0, got 0"),
    (lambda p: p["streams"]["tic"].update(measure="time"),
     "streams.tic.measure: 'time' is not allowed; choose one of ['maf', 'flops', 'samples']"),
])
def test_study_parameters_are_checked(tmp_path, mutate, expected):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, mutate)
    assert expected in str(err.value)


def test_a_stream_may_set_its_own_budget_per_task(tmp_path):
    params = _load(tmp_path, lambda p: p["streams"]["tic"].update(samples_per_task=640))
    assert params.streams["tic"].samples_per_task == 640
    assert params.streams["fif_random"].samples_per_task is None  # train.samples_per_task applies
