"""Pretrained weights through params.yaml, as a user sets them: a ViT-B-32 with random weights saved as an
open_clip checkpoint file, and the same weights in a hub cache folder, each loaded by the pretrain stage into
the base model with identical outputs; offline without them, a clear error naming the file to provide."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clipflux.config import ModelConfig
from clipflux.models import create_model, load_weights
from conftest import REPO

HUB_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # where open_clip fetches ViT-B-32 laion2b_s34b_b79k


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A ViT-B-32 with random weights, saved as open_clip's training checkpoints are (DDP "module." prefix)."""
    torch.manual_seed(1)
    model, tokenizer = create_model(ModelConfig(name="ViT-B-32"))
    path = tmp_path_factory.mktemp("weights") / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "random-vit", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    return model.eval(), tokenizer, path


def _pretrain(project: Path, model: dict, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the pretrain stage in `project` with `model` as params.yaml's model section."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = model
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, str(REPO / "stages/pretrain.py"), "--shards", "data/shards", "--out", "models/base.pt",
           "--checkpoints", "checkpoints/pretrain"]
    return subprocess.run(cmd, cwd=project, capture_output=True, text=True,
                          env=dict(os.environ, CLIPFLUX_MONGO_URL="off", HF_HUB_OFFLINE="1", **(env or {})))


def _same_outputs(original, tokenizer, base: Path) -> None:
    loaded, _ = create_model(ModelConfig(name="ViT-B-32"))
    load_weights(loaded, base)
    loaded.eval()
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = tokenizer(["a photo of a cat", "a diagram"])
    with torch.no_grad():
        assert torch.equal(original.encode_image(images), loaded.encode_image(images))
        assert torch.equal(original.encode_text(texts), loaded.encode_text(texts))
    assert all(torch.equal(a, b) for a, b in zip(original.state_dict().values(), loaded.state_dict().values()))


def test_checkpoint_file_loads_with_identical_outputs(vit, tmp_path):
    original, tokenizer, checkpoint = vit
    proc = _pretrain(tmp_path, {"name": "ViT-B-32", "pretrained": str(checkpoint), "cache_dir": None})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"pretrain: skipped, base model = ViT-B-32 weights from {checkpoint}" in proc.stdout
    _same_outputs(original, tokenizer, tmp_path / "models/base.pt")


def test_weight_tag_found_in_a_cache_dir_offline(vit, tmp_path):
    """The hub's cache layout, as open_clip leaves it after a download elsewhere: found with no network."""
    original, tokenizer, _ = vit
    snapshot = tmp_path / "cache" / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(original.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    proc = _pretrain(tmp_path / "project", {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k",
                                            "cache_dir": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _same_outputs(original, tokenizer, tmp_path / "project/models/base.pt")


def test_offline_without_the_weights_names_the_file_to_provide(tmp_path):
    proc = _pretrain(tmp_path, {"name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k", "cache_dir": str(tmp_path / "empty")})
    assert proc.returncode != 0
    assert f"cannot load ViT-B-32 weights 'laion2b_s34b_b79k'" in proc.stderr
    assert f"Provide the file: open_clip_pytorch_model.bin (or open_clip_model.safetensors) of the Hugging Face hub " \
           f"repository {HUB_REPO}" in proc.stderr
    assert not (tmp_path / "models/base.pt").exists()

    proc = _pretrain(tmp_path, {"name": "ViT-B-32", "pretrained": "no_such_tag", "cache_dir": None})
    assert "'no_such_tag' is neither a checkpoint file nor a weight tag of ViT-B-32" in proc.stderr
    assert "laion2b_s34b_b79k" in proc.stderr


def test_building_a_model_logs_no_warning_and_importing_clipflux_no_deprecation():
    """A stage's log stays quiet: no "No pretrained weights loaded" from open_clip (clipflux loads weights
    itself), no deprecation warnings of Sacred (pkg_resources) or fvcore (torch.jit.script) on import."""
    import subprocess
    import sys

    code = ("import clipflux.tracking, clipflux.budget; from clipflux.config import ModelConfig; "
            "from clipflux.models import create_model; create_model(ModelConfig('clipflux-tiny-rn', None, None))")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
