"""Where LoRA, DoRA, VeRA and LNFit act, checked against sets computed here from the model's own modules, and
what a conv adapter does (FiF's placement: continual_lib/lora.py, dora.py, vera.py, lnfit.py)."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch.nn.utils import parametrize

from clipflux.config import MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardReader
from clipflux.methods import build_method
from clipflux.methods.adapters import merged_state_dict
from clipflux.methods.base import clip_loss
from clipflux.methods.weights import snapshot
from clipflux.models import create_model, image_size, state_sha256
from clipflux.train import Trainer, train_mode

from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
ADAPTERS = ["lora", "dora", "vera"]
STAGES = ("layer1", "layer2", "layer3", "layer4")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(ModelConfig(name=arch))[0]


@pytest.fixture(scope="module")
def texts() -> torch.Tensor:
    tokenizer = create_model(ModelConfig(name="clipflux-tiny-rn"))[1]
    return tokenizer(["a red circle", "two squares", "a blue hexagon", "the digit 7"])


def _adapted(arch: str, name: str, **overrides) -> tuple[torch.nn.Module, object]:
    model = _model(arch)
    method = build_method(name, dict(PARAMS[name], **overrides))
    method.setup(model)
    return model, method


def _parametrized(model: torch.nn.Module) -> set[str]:
    """`module.attr` of every parametrized weight."""
    return {f"{name}.{attr}" for name, module in model.named_modules() if parametrize.is_parametrized(module)
            for attr in module.parametrizations}


def _stage_convs(model: torch.nn.Module, stages=STAGES) -> set[str]:
    return {f"visual.{name}.weight" for name, module in model.visual.named_modules()
            if isinstance(module, torch.nn.Conv2d) and name.split(".")[0] in stages}


def _block_weights(prefix: str, depth: int, blocks=None) -> set[str]:
    return {f"{prefix}.{i}.{w}" for i in (blocks if blocks is not None else range(depth))
            for w in ("attn.in_proj_weight", "mlp.c_proj.weight")}


# -- placement -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_resnet_tower_gets_adapters_on_every_conv_of_its_stages_and_nowhere_else(name):
    model, _ = _adapted("clipflux-tiny-rn", name)
    convs = _stage_convs(_model("clipflux-tiny-rn"))
    # 4 stages x one bottleneck of conv1, conv2, conv3 and the downsample conv
    assert len(convs) == 16 and "visual.layer3.0.downsample.0.weight" in convs
    text = _block_weights("transformer.resblocks", 4)
    assert _parametrized(model) == convs | text
    assert not any(n.startswith(("visual.conv", "visual.attnpool")) for n in _parametrized(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".parametrizations." in n for n in trainable)


@pytest.mark.parametrize("name", ADAPTERS)
def test_resnet_block_indices_select_stages(name):
    model, _ = _adapted("clipflux-tiny-rn", name, towers=["image"], image_blocks=[1, -1])
    assert _parametrized(model) == _stage_convs(model, ("layer2", "layer4"))


@pytest.mark.parametrize("kv_only", [False, True])
@pytest.mark.parametrize("name", ADAPTERS)
def test_transformer_blocks_get_adapters_on_in_proj_and_c_proj_only(name, kv_only):
    model, _ = _adapted("clipflux-tiny", name, kv_only=kv_only)
    expected = _block_weights("visual.transformer.resblocks", 4) | _block_weights("transformer.resblocks", 4)
    assert _parametrized(model) == expected  # not out_proj, not c_fc, not the patch embedding conv1
    d = 128
    rows = [(d, 2 * d), (2 * d, 3 * d)] if kv_only else [(0, d), (d, 2 * d), (2 * d, 3 * d)]
    for block in list(model.visual.transformer.resblocks) + list(model.transformer.resblocks):
        assert block.attn.parametrizations.in_proj_weight[0].ranges == rows
        assert block.mlp.c_proj.parametrizations.weight[0].ranges == [(0, d)]


def test_text_blocks_of_a_resnet_model_follow_their_indices():
    model, _ = _adapted("clipflux-tiny-rn", "lora", towers=["text"], text_blocks=[0, 2])
    assert _parametrized(model) == _block_weights("transformer.resblocks", 4, (0, 2))


# -- the conv adapter ------------------------------------------------------------------------------------


def _images(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    size = image_size(model)
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5))


def _set_nonzero(model: torch.nn.Module) -> None:
    """Give the adapters' zero-initialised factor (LoRA/DoRA's B, VeRA's b) random values."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("lora_B", "vera_b")):  # VeRA's update also carries d (0.1) and no 1/r: larger b
                p.copy_((0.05 if n.endswith("lora_B") else 1.0) * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name", ADAPTERS)
def test_conv_adapter_starts_as_the_identity_acts_once_set_and_merges_exactly(name):
    plain = _model("clipflux-tiny-rn").eval()
    model, method = _adapted("clipflux-tiny-rn", name, towers=["image"])
    model.eval()
    x = _images(model)
    with torch.no_grad():
        assert torch.equal(model.visual.layer2[0].conv2.weight, plain.visual.layer2[0].conv2.weight)
        assert torch.allclose(model.encode_image(x), plain.encode_image(x), atol=1e-6)
        _set_nonzero(model)
        adapted = model.encode_image(x)
        assert not torch.allclose(adapted, plain.encode_image(x), atol=1e-4)
        merged = method.eval_model().eval()
        assert not any(".parametrizations." in k for k in merged.state_dict())
        assert torch.allclose(merged.encode_image(x), adapted, atol=1e-5)
        state = merged_state_dict(model)
        assert torch.equal(state["visual.layer2.0.conv2.weight"], model.visual.layer2[0].conv2.weight)


def test_lora_conv_update_is_fifs_view_of_b_times_a():
    """delta = scale * (B A).view(out, in, k, k), A of (r*k, in*k), B of (out*k, r*k) (lora.py:215-255)."""
    model, method = _adapted("clipflux-tiny-rn", "lora", towers=["image"], scale=0.5)
    _set_nonzero(model)
    conv = model.visual.layer3[0].conv2  # 3x3, 128 -> 128
    adapter = conv.parametrizations.weight[0].adapters[0]
    r = PARAMS["lora"]["rank"]
    assert adapter.lora_A.shape == (r * 3, 128 * 3) and adapter.lora_B.shape == (128 * 3, r * 3)
    original = conv.parametrizations.weight.original
    with torch.no_grad():
        expected = original + 0.5 * (adapter.lora_B @ adapter.lora_A).view(original.shape)
        assert torch.allclose(conv.weight, expected, atol=1e-6)
        x = torch.randn(1, 128, 4, 4)
        assert torch.allclose(conv(x), torch.nn.functional.conv2d(x, expected, padding=1), atol=1e-5)


def test_dora_conv_keeps_one_magnitude_per_output_channel():
    model, _ = _adapted("clipflux-tiny-rn", "dora", towers=["image"])
    _set_nonzero(model)
    conv = model.visual.layer4[0].conv2  # 3x3, 256 -> 256
    adapter = conv.parametrizations.weight[0].adapters[0]
    assert adapter.magnitude.shape == (256,)
    with torch.no_grad():
        adapter.magnitude.mul_(torch.linspace(0.5, 2.0, 256))
        assert torch.allclose(conv.weight.flatten(1).norm(dim=1), adapter.magnitude, rtol=1e-5)


def test_vera_conv_vectors_have_fifs_shapes():
    """d of r*k and b of out*k entries (vera.py:229-234)."""
    model, _ = _adapted("clipflux-tiny-rn", "vera", towers=["image"])
    r = PARAMS["vera"]["rank"]
    three = model.visual.layer1[0].conv2.parametrizations.weight[0].adapters[0]
    one = model.visual.layer1[0].conv3.parametrizations.weight[0].adapters[0]
    assert three.vera_d.shape == (r * 3,) and three.vera_b.shape == (32 * 3,)
    assert one.vera_d.shape == (r,) and one.vera_b.shape == (128,)


def test_adapter_methods_keep_their_unadapted_copy_on_the_host():
    _, method = _adapted("clipflux-tiny", "lora")
    assert "_plain" in method.host_state
    assert all(p.device.type == "cpu" for p in method._plain.parameters())
    assert not _parametrized(method._plain)


# -- LNFit and BatchNorm statistics -----------------------------------------------------------------------


def _layernorm_parameters(model: torch.nn.Module) -> set[str]:
    return {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, torch.nn.LayerNorm)
            for p, _ in module.named_parameters(recurse=False)}


def _batchnorms(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


def _train_steps(model: torch.nn.Module, texts: torch.Tensor, steps: int = 3) -> None:
    """A few training steps as the trainer takes them: `train_mode`, CLIP loss, AdamW on what trains."""
    images = _images(model, 4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_mode(model)
    for _ in range(steps):
        loss = clip_loss(model(images, texts))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in snapshot(model).items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_lnfit_trains_exactly_the_layernorms_and_leaves_batchnorm_statistics_alone(texts):
    model = _model("clipflux-tiny-rn")
    build_method("lnfit", PARAMS["lnfit"]).setup(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _layernorm_parameters(model) == {n for n, _ in model.named_parameters() if "ln_" in n}
    before, stats = snapshot(model), _statistics(model)
    assert len(stats) == 3 * len(_batchnorms(model)) > 0
    _train_steps(model, texts)
    after = snapshot(model)
    assert {n for n in trainable if not torch.equal(before[n], after[n])} == trainable
    assert all(torch.equal(stats[k], after[k]) for k in stats)


def test_lnfit_batchnorm_option_trains_affine_parameters_with_frozen_statistics(texts):
    model = _model("clipflux-tiny-rn")
    build_method("lnfit", dict(PARAMS["lnfit"], batchnorm=True)).setup(model)
    norms = _batchnorms(model)
    affine = {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _layernorm_parameters(model) | affine and "visual.bn1.weight" in affine
    before, stats = snapshot(model), _statistics(model)
    _train_steps(model, texts)
    after = snapshot(model)
    assert all(not m.training for m in norms.values()) and model.training
    assert all(not torch.equal(before[f"{n}.bias"], after[f"{n}.bias"]) for n in norms)
    assert all(torch.equal(stats[k], after[k]) for k in stats)


def test_training_batchnorm_otherwise_moves_its_statistics(texts):
    """The control of the two tests above: full finetuning does update the running statistics."""
    model = _model("clipflux-tiny-rn")
    build_method("finetune", {}).setup(model)
    stats = _statistics(model)
    _train_steps(model, texts, steps=1)
    after = snapshot(model)
    assert all(not torch.equal(stats[k], after[k]) for k in stats)


# -- exact resume on the ResNet tower ---------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _trainer(shards, ckpt_dir, log, name: str, params: dict) -> Trainer:
    readers = [ShardReader(shards / "novel_shapes", "train"), ShardReader(shards / "pool", "train")]
    items = index_items(0, readers[0])
    torch.manual_seed(0)
    model, tokenizer = create_model(ModelConfig(name="clipflux-tiny-rn"))
    optim = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=4)
    return Trainer(model, build_method(name, params), tokenizer, readers, [items[:8], items[8:16]],
                   index_items(1, readers[1]), RunConfig(seed=3, checkpoint_every=2, optim=optim), 3, ckpt_dir, log,
                   fingerprint={"method": name}, mixture=MixtureConfig(0.5, 0.25, 0.25))


@pytest.mark.parametrize("name, overrides", [("dora", {}), ("lnfit", {"batchnorm": True})])
def test_conv_adapters_and_frozen_statistics_resume_bit_identically(name, overrides, tiny_shards, tmp_path):
    params = dict(PARAMS[name], **overrides)
    reference = _trainer(tiny_shards, tmp_path / "reference", lambda *_: None, name, params)
    reference.fit()
    last = 2 * 3 - 1

    def die_at_last_step(key, value, step):
        if key == "train/lr" and step == last:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(tiny_shards, tmp_path / "cut", die_at_last_step, name, params).fit()
    resumed = _trainer(tiny_shards, tmp_path / "cut", lambda *_: None, name, params)
    resumed.fit()
    assert resumed.resumed_from["task"] == 1 and resumed.resumed_from["step"] > 0
    assert state_sha256(resumed.model.state_dict()) == state_sha256(reference.model.state_dict())
    assert state_sha256(resumed.method.eval_model().state_dict()) == \
        state_sha256(reference.method.eval_model().state_dict())
