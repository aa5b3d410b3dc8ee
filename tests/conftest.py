"""Shared fixtures: a tiny synthetic world written as real webdataset shards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from clipflux.config import WorldConfig
from clipflux.data.pipeline import preprocess
from clipflux.data.world import generate_world

settings.register_profile("ci", deadline=None, max_examples=50)
settings.load_profile("ci")
os.environ.setdefault("TQDM_DISABLE", "1")
torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """The two markers that `./run.sh test` (the fast tier) leaves out and `./run.sh test-all` runs."""
    config.addinivalue_line("markers", "slow: starts processes to kill them, torchrun or a browser (test-all only)")
TINY_WORLD = WorldConfig(seed=0, scale=0.1, image_size=32, pool_size=2000, train_per_class=40,
                         test_per_class=20, shard_size=64)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Shards of a tiny world (200 pool images, 4 train and 2 test images per class)."""
    root = tmp_path_factory.mktemp("world")
    generate_world(TINY_WORLD, root / "raw", progress=False)
    preprocess(root / "raw", root / "shards", TINY_WORLD.shard_size)
    return root / "shards"


def copy_repository(root: Path) -> Path:
    """Copy the repository's files (tracked and new, as git sees them) into `root`; returns `root`."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    return root
