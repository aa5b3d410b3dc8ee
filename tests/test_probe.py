"""The linear-probe reference: the logistic regression itself, and `clipflux linear-probe` on real shards."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipflux import cli
from clipflux.config import load_params
from clipflux.models import initial_model, save_weights
from clipflux.probe import classification_datasets, fit_probe, probe_accuracy

from conftest import REPO


@settings(max_examples=15)
@given(st.integers(2, 6), st.integers(2, 12), st.integers(0, 2**16))
def test_a_probe_separates_linearly_separable_classes_and_is_deterministic(classes, dim, seed):
    """Points around far-apart class centres are classified perfectly; the same features give the same probe."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(classes, dim, generator=g)
    labels = torch.arange(classes).repeat(8)
    features = centres[labels] + 0.01 * torch.randn(len(labels), dim, generator=g)
    if torch.cdist(centres, centres).add(torch.eye(classes) * 1e9).min() < 1.0:
        return  # two centres drawn too close together: not a separable example
    weight, bias = fit_probe(features, labels, classes)
    assert probe_accuracy(weight, bias, features, labels.numpy()) == 100.0
    again = fit_probe(features, labels, classes)
    assert torch.equal(weight, again[0]) and torch.equal(bias, again[1])


def test_weight_decay_shrinks_the_probe():
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    loose, _ = fit_probe(features, labels, 3, weight_decay=1e-4)
    tight, _ = fit_probe(features, labels, 3, weight_decay=1.0)
    assert tight.norm() < loose.norm() / 2


def test_the_command_prints_a_row_per_adaptation_dataset(tiny_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # params.yaml's model
    model, _ = initial_model(load_params().model, seed=0)
    save_weights(model, tmp_path / "model.pt")
    datasets = classification_datasets(tiny_shards)
    assert datasets and "pool" not in datasets
    cli.run(["linear-probe", "--model", str(tmp_path / "model.pt"), "--shards", str(tiny_shards),
             "--datasets", *datasets[:2], "--out", str(tmp_path / "probe.md")])
    printed = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in printed.splitlines() if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == datasets[:2] + ["mean"]
    assert all(0.0 <= float(v) <= 100.0 for r in rows for v in r[1:3])
    assert (tmp_path / "probe.md").read_text() == printed
    assert np.isclose(float(rows[2][2]), np.mean([float(r[2]) for r in rows[:2]]), atol=0.051)
