"""Every registered method on real shards (smoke and exact resume), and each method's core, tested directly."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from clipflux.config import ConfigError, MixtureConfig, ModelConfig, OptimConfig, RunConfig
from clipflux.data.loader import index_items
from clipflux.data.shards import ShardReader
from clipflux.methods import REGISTRY, TaskContext, build_method, merging
from clipflux.methods.adapters import merged_state_dict
from clipflux.methods.base import clip_loss
from clipflux.methods.lwf import similarity_kl
from clipflux.methods.weights import snapshot
from clipflux.models import create_model, image_size, state_sha256
from clipflux.train import Trainer

from conftest import REPO

STEPS, TASKS = 3, 2
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=1, clip_grad_norm=1.0, batch_size=4)
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())["methods"]
PARAMS["ewc"] = dict(PARAMS["ewc"], max_fim_samples=8)  # two batches: enough to test, cheap to run
PARAMS["mas"] = dict(PARAMS["mas"], max_samples=8)


class Interrupt(Exception):
    pass


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on two cores shared with other jobs, two threads spin-wait and run several times
    slower; every comparison here is between runs in the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str = "clipflux-tiny") -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    return create_model(ModelConfig(name=arch))


def _trainer(shards, ckpt_dir, log, name: str, params: dict | None = None, arch: str = "clipflux-tiny") -> Trainer:
    readers = [ShardReader(shards / "novel_shapes", "train"), ShardReader(shards / "pool", "train")]
    items = index_items(0, readers[0])
    tasks = [items[: len(items) // 2], items[len(items) // 2:]]
    model, tokenizer = _model(arch)
    method = build_method(name, PARAMS.get(name) if params is None else params)
    return Trainer(model, method, tokenizer, readers, tasks, index_items(1, readers[1]),
                   RunConfig(seed=3, checkpoint_every=2, optim=OPTIM), STEPS, ckpt_dir, log,
                   fingerprint={"method": name}, mixture=MixtureConfig(0.5, 0.25, 0.25))


_references: dict[str, dict] = {}


def _reference(name: str, shards, tmp_path_factory) -> dict:
    """One uninterrupted two-task run per method (shared by the smoke, selection and resume tests)."""
    if name not in _references:
        log = []
        trainer = _trainer(shards, tmp_path_factory.mktemp(f"ref-{name}"), lambda k, v, s: log.append((k, v, s)), name)
        before = snapshot(trainer.model)
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.fit()
        evaluated = trainer.method.eval_model()
        _references[name] = {"before": before, "after": snapshot(trainer.model), "trainable": trainable,
                             "log": log, "eval": evaluated, "eval_sha": state_sha256(evaluated.state_dict()),
                             "model_sha": state_sha256(trainer.model.state_dict())}
    return _references[name]


def _changed(run: dict) -> set[str]:
    before, after = run["before"], run["after"]
    return {n for n in after if not torch.equal(before[n], after[n])}


# -- every registered method ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_trains_two_tasks_and_changes_only_its_trainable_parameters(name, tiny_shards,
                                                                                  tmp_path_factory):
    run = _reference(name, tiny_shards, tmp_path_factory)
    losses = [v for k, v, s in run["log"] if k == "train/loss"]
    assert len(losses) >= STEPS * TASKS and all(math.isfinite(v) for v in losses)
    assert run["trainable"] and _changed(run) == run["trainable"]
    plain, _ = _model()
    evaluated = run["eval"]
    assert set(evaluated.state_dict()) == set(plain.state_dict())  # evaluate/save see a plain open_clip model
    with torch.no_grad():
        size = image_size(evaluated)
        image = evaluated.encode_image(torch.zeros(2, 3, size, size))
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_resumes_bit_identically_mid_task(name, tiny_shards, tmp_path_factory, tmp_path):
    """Killed at the last step of the last task, the rerun resumes from that task's mid-task checkpoint
    (so `begin_task` is not called again) and ends with the reference's weights, evaluated weights and losses."""
    reference = _reference(name, tiny_shards, tmp_path_factory)
    kill_after = max(s for k, _, s in reference["log"] if k == "train/loss")
    seen = []

    def log_then_die(key, value, step):
        seen.append((key, value, step))
        if key == "train/lr" and step == kill_after:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(tiny_shards, tmp_path, log_then_die, name).fit()
    resumed_log = []
    resumed = _trainer(tiny_shards, tmp_path, lambda k, v, s: resumed_log.append((k, v, s)), name)
    resumed.fit()
    assert resumed.resumed_from["task"] == TASKS - 1 and resumed.resumed_from["step"] > 0
    assert state_sha256(resumed.method.eval_model().state_dict()) == reference["eval_sha"]
    assert state_sha256(resumed.model.state_dict()) == reference["model_sha"]
    merged = {(k, s): v for k, v, s in seen + resumed_log}
    assert merged == {(k, s): v for k, v, s in reference["log"]}


def _selected_by_name(name: str, parameter: str) -> bool:
    """What each selective method must train, written out independently of its implementation."""
    image = parameter.startswith("visual.")
    return {
        "locked_image": not image,
        "locked_text": image or parameter == "logit_scale",
        "bitfit": parameter.endswith("bias"),
        "lnfit": ".ln_" in f".{parameter}",
    }[name]


@pytest.mark.parametrize("name", ["locked_image", "locked_text", "bitfit", "lnfit"])
def test_selective_methods_change_exactly_the_parameters_they_select(name, tiny_shards, tmp_path_factory):
    run = _reference(name, tiny_shards, tmp_path_factory)
    expected = {n for n in run["before"] if _selected_by_name(name, n)}
    assert expected and _changed(run) == expected


# -- a ResNet image tower (the default clipflux-tiny-rn) -------------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_trains_a_resnet_image_tower(name, tiny_shards, tmp_path):
    """BatchNorm layers: trained ones update their running statistics, frozen ones keep them (a locked tower
    stays exactly the base); parameters change only where the method trains."""
    trainer = _trainer(tiny_shards, tmp_path, lambda *_: None, name, arch="clipflux-tiny-rn")
    before = snapshot(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.fit()
    after = snapshot(trainer.model)
    changed = {n for n in after if not torch.equal(before[n], after[n])}
    parameters = {n for n, _ in trainer.model.named_parameters()}
    # open_clip zero-initialises each bottleneck's last BatchNorm gain, so while that gain stays frozen at zero
    # (BitFit), the layers before it get no gradient: changed parameters are a subset of the trainable ones
    assert trainable and changed & parameters and changed & parameters <= trainable
    for module_name, module in trainer.model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            stats = f"{module_name}.running_mean"
            assert (stats in changed) == any(p.requires_grad for p in module.parameters()), stats
    assert set(trainer.method.eval_model().state_dict()) == set(_model("clipflux-tiny-rn")[0].state_dict())


# Where LoRA, DoRA, VeRA and LNFit act on a ResNet tower (and on transformer blocks): tests/test_placement.py


# -- adapters ------------------------------------------------------------------------------------------


def _batch(tokenizer, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    captions = ["a red circle", "two small squares", "a hexagon on blue", "the digit 7"] * (n // 4 + 1)
    size = image_size(_model()[0])
    return {"images": torch.randn(n, 3, size, size, generator=g), "texts": tokenizer(captions[:n])}


def _perturb_trainable(model: torch.nn.Module, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))


def _adapter(name: str, **overrides) -> tuple[torch.nn.Module, object, object]:
    model, tokenizer = _model()
    method = build_method(name, dict(PARAMS[name], **overrides))
    method.setup(model)
    return model, tokenizer, method


@pytest.mark.parametrize("kv_only", [False, True])
@pytest.mark.parametrize("name", ["lora", "dora", "vera"])
def test_merged_adapters_give_the_same_outputs_as_the_adapted_model(name, kv_only):
    model, tokenizer, method = _adapter(name, kv_only=kv_only)
    plain, _ = _model()
    batch = _batch(tokenizer)
    model.eval(), plain.eval()
    with torch.no_grad():  # at the start, adapters are the identity
        for a, b in zip(model(batch["images"], batch["texts"])[:2], plain(batch["images"], batch["texts"])[:2]):
            assert torch.allclose(a, b, atol=1e-6)
    _perturb_trainable(model)
    merged = method.eval_model().eval()
    assert not any(".parametrizations." in k for k in merged.state_dict())
    with torch.no_grad():
        adapted = model(batch["images"], batch["texts"])
        for a, b in zip(adapted[:2], merged(batch["images"], batch["texts"])[:2]):
            assert torch.allclose(a, b, atol=1e-5)
        assert not torch.allclose(adapted[0], plain(batch["images"], batch["texts"])[0], atol=1e-4)


def test_kv_only_adapts_keys_and_values_of_the_chosen_blocks_only():
    model, _, method = _adapter("lora", kv_only=True, towers=["image"], image_blocks=[1, 3])
    base = snapshot(model)
    _perturb_trainable(model)
    merged = merged_state_dict(model)
    width = 128

    def unadapted(key: str) -> torch.Tensor:  # the value of a merged weight before the adapters
        if key in base:
            return base[key]
        module, attr = key.rsplit(".", 1)
        return base[f"{module}.parametrizations.{attr}.original"]

    changed = {k for k in merged if not torch.equal(merged[k], unadapted(k))}
    # k and v of the packed in_proj, and the MLP's c_proj, which FiF's kv_only leaves adapted
    assert changed == {f"visual.transformer.resblocks.{i}.{w}" for i in (1, 3)
                       for w in ("attn.in_proj_weight", "mlp.c_proj.weight")}
    for i in (1, 3):
        w = merged[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"]
        original = base[f"visual.transformer.resblocks.{i}.attn.parametrizations.in_proj_weight.original"]
        assert torch.equal(w[:width], original[:width])  # queries untouched
        assert not torch.equal(w[width:2 * width], original[width:2 * width])
        assert not torch.equal(w[2 * width:], original[2 * width:])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"visual.transformer.resblocks.{i}.attn.parametrizations.in_proj_weight.0.adapters.{j}.{ab}"
        for i in (1, 3) for j in (0, 1) for ab in ("lora_A", "lora_B")} | {
        f"visual.transformer.resblocks.{i}.mlp.c_proj.parametrizations.weight.0.adapters.0.{ab}"
        for i in (1, 3) for ab in ("lora_A", "lora_B")}


def test_adapter_blocks_out_of_range_are_refused():
    with pytest.raises(ValueError, match="4 blocks"):
        _adapter("lora", text_blocks=[4])
    with pytest.raises(ConfigError, match="rank"):
        build_method("lora", dict(PARAMS["lora"], rank=0))
    with pytest.raises(ConfigError, match="unknown key"):
        build_method("vera", dict(PARAMS["vera"], alpha=2))


# -- regularisers --------------------------------------------------------------------------------------


def _context(tokenizer, index: int = 0, batches: int = 2) -> TaskContext:
    return TaskContext(index, 2, batches, lambda n: (_batch(tokenizer, seed=s) for s in range(n)))


def test_mas_importance_is_the_output_norms_gradient_blended_with_alpha():
    """Omega_task for one batch is |d mean_rows ||similarity logits||_2 / d theta|, computed here by backward();
    after a second task Omega = alpha Omega_1 + (1 - alpha) Omega_2; the penalty is reg / 2 sum Omega (d theta)^2."""
    from clipflux.methods.lwf import similarity_logits

    model, tokenizer = _model()
    method = build_method("mas", dict(PARAMS["mas"], max_samples=4, alpha=0.25))  # one batch of 4
    method.setup(model)
    batch = _batch(tokenizer, seed=0)
    model.zero_grad()
    similarity_logits(model(batch["images"], batch["texts"])).norm(dim=1).mean().backward()
    expected = {n: p.grad.abs().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    method.end_task(_context(tokenizer))
    assert expected and all(torch.allclose(method.importance[n], (1 - 0.25) * g, atol=1e-9)
                            for n, g in expected.items())
    first = {n: v.clone() for n, v in method.importance.items()}
    method.end_task(_context(tokenizer))  # the same batch again: Omega = 0.25 Omega_1 + 0.75 g
    assert all(torch.allclose(method.importance[n], 0.25 * first[n] + 0.75 * expected[n], atol=1e-9)
               for n in expected)
    with torch.no_grad():
        model.visual.proj.add_(0.1)
    out = model(batch["images"], batch["texts"])
    penalty = method.loss(batch, out) - clip_loss(out)
    expected_penalty = PARAMS["mas"]["reg"] / 2 * (method.importance["visual.proj"] * 0.01).sum()
    assert torch.allclose(penalty, expected_penalty, rtol=1e-4)


def test_zscl_averages_every_share_of_the_task_and_the_next_task_starts_from_the_average():
    """ZSCL's weight ensemble with avg_freq = ceil(0.5 x 4) = 2: after steps 0 and 2 (ZSCL's `iteration % avg_freq
    == 0`), avg <- (n avg + theta) / (n + 1) from the task's starting weights; it is evaluated and started from."""
    model, tokenizer = _model()
    method = build_method("zscl", dict(PARAMS["zscl"], we_share=0.5))
    method.setup(model)
    key = "visual.proj"
    zs = snapshot(model)[key]
    method.begin_task(_context(tokenizer, 0, batches=4))
    for _ in range(4):
        _train_like(model, 1.0)
        method.after_step()
    # step 0 (zs + 1): n = 1, (zs + zs + 1) / 2; step 2 (zs + 3): n = 2, (2 (zs + 0.5) + zs + 3) / 3
    assert torch.allclose(method.eval_model().state_dict()[key], zs + 4 / 3, atol=1e-6)
    method.begin_task(_context(tokenizer, 1, batches=4))
    assert torch.allclose(model.state_dict()[key], zs + 4 / 3, atol=1e-6)


def test_zscl_loss_is_clip_plus_distillation_of_the_zero_shot_model_plus_the_l2_pull():
    from clipflux.methods.zscl import distillation

    model, tokenizer = _model()
    plain, pulled = (build_method("zscl", dict(PARAMS["zscl"], l2=l2)) for l2 in (0.0, 1.0))
    for method in (plain, pulled):
        method.setup(model)
        method.begin_task(_context(tokenizer, 0))
    batch = _batch(tokenizer)
    with torch.no_grad():
        model.visual.proj.add_(0.1)
    out = model(batch["images"], batch["texts"])
    pull = pulled.loss(batch, out) - plain.loss(batch, out)
    moved = model.visual.proj.numel() * 0.01  # ZSCL's squared distance summed: every entry of visual.proj moved 0.1
    assert torch.allclose(pull, torch.tensor(moved), rtol=1e-4)
    reference_images, reference_texts = plain.reference(batch["images"], batch["texts"])[:2]
    scale = out[2]
    student, teacher = scale * out[0] @ reference_texts.T, scale * reference_images @ reference_texts.T
    expected = clip_loss(out) + distillation(teacher, student, 2.0) + distillation(teacher.T, student.T, 2.0)
    assert torch.allclose(plain.loss(batch, out), expected)
    soft = torch.softmax(teacher / 2.0, dim=1)  # the distillation is 4 x the cross-entropy against the soft target
    assert torch.allclose(distillation(teacher, student, 2.0),
                          4.0 * -(soft * torch.log_softmax(student / 2.0, dim=1)).sum(dim=1).mean())


def test_lora_per_task_starts_each_task_with_fresh_adapters_and_evaluates_their_average():
    """FiF's lora_per_task: B is zero again at every task start (the adapted weights are the base's), A is redrawn;
    the evaluated weights are base + scale * mean(B) mean(A) over the stored tasks (the means taken separately)."""
    from clipflux.methods.lora_per_task import adapter_parameters

    model, tokenizer = _model()
    method = build_method("lora_per_task", PARAMS["lora_per_task"])
    method.setup(model)
    base = merged_state_dict(model)
    stored = []
    for task in range(2):
        method.begin_task(_context(tokenizer, task))
        assert all(torch.equal(v, base[k]) for k, v in merged_state_dict(model).items())  # a fresh start
        with torch.no_grad():
            for name, param in adapter_parameters(model).items():
                if name.endswith("lora_B"):
                    param.normal_(0, 0.01)
        stored.append({n: p.detach().clone() for n, p in adapter_parameters(model).items()})
        method.end_task(_context(tokenizer, task))
    assert not torch.equal(*(s[next(iter(s))] for s in stored))  # task 2's A was redrawn
    module = model.visual.transformer.resblocks[0].mlp.c_proj
    prefix = "visual.transformer.resblocks.0.mlp.c_proj.parametrizations.weight.0.adapters.0"
    mean_a = (stored[0][f"{prefix}.lora_A"] + stored[1][f"{prefix}.lora_A"]) / 2
    mean_b = (stored[0][f"{prefix}.lora_B"] + stored[1][f"{prefix}.lora_B"]) / 2
    expected = module.parametrizations.weight.original + PARAMS["lora_per_task"]["scale"] * mean_b @ mean_a
    evaluated = method.eval_model().state_dict()["visual.transformer.resblocks.0.mlp.c_proj.weight"]
    assert torch.allclose(evaluated, expected, atol=1e-6)


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_quadratically_away_from_it():
    model, tokenizer = _model()
    method = build_method("ewc", PARAMS["ewc"])
    method.setup(model)
    assert method.penalty().item() == 0.0
    method.end_task(_context(tokenizer))
    assert all((f >= 0).all() for f in method.fisher.values()) and any(f.sum() > 0 for f in method.fisher.values())
    assert method.penalty().item() == 0.0
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    penalties = []
    for step in (1e-3, 2e-3):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(method.anchor[n] + step * direction[n])
        penalties.append(method.penalty().item())
    assert 0 < penalties[0] < penalties[1] and penalties[1] == pytest.approx(4 * penalties[0], rel=1e-3)
    fisher = {n: f.clone() for n, f in method.fisher.items()}
    method.end_task(_context(tokenizer))  # online: F <- gamma * F + F_new, a new anchor
    assert all((method.fisher[n] >= fisher[n] * PARAMS["ewc"]["gamma"] - 1e-12).all() for n in fisher)
    assert method.penalty().item() == 0.0


def test_si_accumulates_the_path_integral_and_penalises_moving_important_parameters():
    model, tokenizer = _model()
    method = build_method("si", PARAMS["si"])
    method.setup(model)
    method.begin_task(_context(tokenizer))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(2):
        batch = _batch(tokenizer, seed=seed)
        loss = method.loss(batch, model(batch["images"], batch["texts"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()
    # With plain SGD, -g * delta = lr * g^2 >= 0 (FiF's form of the path integral).
    assert all((w >= -1e-12).all() for w in method.path.values())
    method.end_task(_context(tokenizer))
    assert all((o >= 0).all() for o in method.importance.values())
    assert method.penalty().item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert method.penalty().item() > 0


def test_lwf_distillation_is_zero_against_itself_and_positive_after_a_change():
    logits = torch.randn(4, 4)
    assert similarity_kl(logits, logits, 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert similarity_kl(logits + torch.randn(4, 4), logits, 2.0).item() > 0
    model, tokenizer = _model()
    method = build_method("lwf", PARAMS["lwf"])
    method.setup(model)
    method.begin_task(_context(tokenizer))
    batch = _batch(tokenizer)
    model.eval()
    out = model(batch["images"], batch["texts"])
    assert method.loss(batch, out).item() == pytest.approx(clip_loss(out).item(), abs=1e-6)
    _perturb_trainable(model, 0.02)
    out = model(batch["images"], batch["texts"])
    assert method.loss(batch, out).item() > clip_loss(out).item()


# -- weight averages and merges -----------------------------------------------------------------------


def test_ema_is_the_exponential_average_of_the_weights_after_each_step():
    model, _ = _model()
    method = build_method("ema", {"decay": 0.9})
    method.setup(model)
    start = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    method.after_step()
    ema = method.eval_model().state_dict()
    for n, value in model.state_dict().items():
        assert torch.allclose(ema[n], 0.9 * start[n] + 0.1 * value, atol=1e-6)


def _train_like(model: torch.nn.Module, amount: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


@pytest.mark.parametrize("train_from", ["merged", "finetuned", "zeroshot"])
def test_paint_merges_after_every_task_and_trains_from_the_chosen_weights(train_from):
    model, tokenizer = _model()
    method = build_method("paint", dict(PARAMS["paint"], train_from=train_from, operator="interpolation", alpha=0.5))
    method.setup(model)
    zeroshot = snapshot(model)
    key = "visual.proj"
    method.begin_task(_context(tokenizer, 0))
    _train_like(model, 1.0)  # task 1: zs + 1
    method.end_task(_context(tokenizer, 0))
    assert torch.allclose(method.merged[key], zeroshot[key] + 0.5)  # merged with the zero-shot model
    assert torch.allclose(method.eval_model().state_dict()[key], zeroshot[key] + 0.5)
    method.begin_task(_context(tokenizer, 1))
    start = {"merged": 0.5, "finetuned": 1.0, "zeroshot": 0.0}[train_from]
    assert torch.allclose(model.state_dict()[key], zeroshot[key] + start)
    _train_like(model, 1.0)
    method.end_task(_context(tokenizer, 1))
    # merged_2 = (merged_1 + finetuned_2) / 2, FiF's unrolled merge
    assert torch.allclose(method.merged[key], zeroshot[key] + (0.5 + start + 1.0) / 2)
    state = method.state_dict()
    assert state["merges"] == 2
    state["merged"][key].add_(100.0)  # a saved state is a copy, not the live tensors
    assert torch.allclose(method.merged[key], zeroshot[key] + (0.5 + start + 1.0) / 2)


@pytest.mark.parametrize("operator", ["slerp", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "magmax",
                                      "model_stock", "tall_masks", "random"])
def test_paint_runs_every_operator_from_the_zero_shot_base(operator):
    model, tokenizer = _model()
    method = build_method("paint", dict(PARAMS["paint"], operator=operator, density=1.0, scale=1.0))
    method.setup(model)
    zeroshot = snapshot(model)
    _train_like(model, 0.1)
    method.end_task(_context(tokenizer, 0))
    merged, start = method.merged["visual.proj"], zeroshot["visual.proj"]
    if operator == "slerp":  # halfway along the arc from the zero-shot to the finetuned weights
        expected = merging.slerp(zeroshot, snapshot(model), 0.5)["visual.proj"]
        assert torch.allclose(merged, expected) and not torch.allclose(merged, start)
    elif operator == "model_stock":  # the running merge's task vector is zero: cosine 0, the zero-shot model (FiF)
        assert torch.equal(merged, start)
    elif operator == "random":  # each entry from the new model or from the running merge (the zero-shot model)
        new = torch.isclose(merged, start + 0.1, atol=1e-6)
        assert (new | torch.isclose(merged, start)).all() and 0 < new.float().mean() < 1
    else:  # the first merge of a task vector with the zero-shot model (task vector 0) is the task vector
        assert torch.allclose(merged, start + 0.1, atol=1e-6)


def test_paint_with_lines_scales_each_block_of_the_merged_task_vector():
    model, tokenizer = _model()
    lines = {"apply": True, "alpha": 0.5, "beta": 0.5, "shape": "linear"}
    method = build_method("paint", dict(PARAMS["paint"], operator="task_arithmetic", lines=lines))
    method.setup(model)
    zeroshot = snapshot(model)
    _train_like(model, 0.1)
    method.end_task(_context(tokenizer, 0))
    last = max(int(k.split(".")[3]) for k in zeroshot if k.startswith("visual.transformer.resblocks."))
    for key, factor in [("visual.transformer.resblocks.0.mlp.c_fc.weight", 0.5),
                        (f"visual.transformer.resblocks.{last}.mlp.c_fc.weight", 1.0), ("visual.proj", 0.5)]:
        assert torch.allclose(method.merged[key], zeroshot[key] + 0.1 * factor, atol=1e-6), key


# FiF's merging regimes (ema_paint, zs_paint, ft_paint, double_merge_*.py) as train_from x evaluate, with
# interpolation and alpha 0.5 from zero-shot weights zs: tasks move the weights by +1 and +2 from where they start.
# merged: the running merge from zs; unrolled: from finetuned_1; all: the mean of the finetuned; wise: the last
# finetuned merged with zs; finetuned: the last task's.
AFTER_FIRST = {"merged": 0.5, "unrolled": 1.0, "all": 1.0, "wise": 0.5, "finetuned": 1.0, "zeroshot": 0.0}


@pytest.mark.parametrize("train_from", ["merged", "unrolled", "all", "wise", "finetuned", "zeroshot"])
@pytest.mark.parametrize("evaluate", ["merged", "unrolled", "all", "wise", "finetuned"])
def test_paint_regimes_train_from_and_evaluate_the_chosen_weights(train_from, evaluate):
    model, tokenizer = _model()
    method = build_method("paint", dict(PARAMS["paint"], train_from=train_from, evaluate=evaluate,
                                        operator="interpolation", alpha=0.5))
    method.setup(model)
    key = "visual.proj"
    zs = snapshot(model)[key]
    method.begin_task(_context(tokenizer, 0))
    _train_like(model, 1.0)  # finetuned_1 = zs + 1
    method.end_task(_context(tokenizer, 0))
    assert torch.allclose(method.eval_model().state_dict()[key], zs + AFTER_FIRST[evaluate])
    method.begin_task(_context(tokenizer, 1))
    start = AFTER_FIRST[train_from]
    assert torch.allclose(model.state_dict()[key], zs + start)
    _train_like(model, 2.0)
    method.end_task(_context(tokenizer, 1))
    finetuned_2 = start + 2.0
    expected = {"merged": (0.5 + finetuned_2) / 2, "unrolled": (1.0 + finetuned_2) / 2, "all": (1.0 + finetuned_2) / 2,
                "wise": finetuned_2 / 2, "finetuned": finetuned_2}[evaluate]
    assert torch.allclose(method.eval_model().state_dict()[key], zs + expected, atol=1e-6)
    state = method.state_dict()
    assert len(state["finetuned"]) == (2 if "all" in (train_from, evaluate) else 0)


def test_paint_regimes_resume_from_their_saved_state():
    """Every kind of merged weights survives state_dict / load_state_dict (a copy, not the live tensors)."""
    model, tokenizer = _model()
    params = dict(PARAMS["paint"], train_from="all", evaluate="unrolled", operator="dare_ties", density=0.5)
    method = build_method("paint", params)
    method.setup(model)
    for task in range(2):
        method.begin_task(_context(tokenizer, task))
        _train_like(model, 0.1 * (task + 1))
        method.end_task(_context(tokenizer, task))
    state = method.state_dict()
    again = build_method("paint", params)
    again.setup(_model()[0])
    again.load_state_dict(state)
    expected, restored = method.eval_model().state_dict(), again.eval_model().state_dict()
    assert all(torch.equal(restored[k], v) for k, v in expected.items())
    method.begin_task(_context(tokenizer, 2))  # train from the all-merge (DARE draws seeded by (seed, task))
    started = snapshot(model)
    other = _model()[0]
    again.setup(other)
    again.load_state_dict(state)
    again.begin_task(_context(tokenizer, 2))
    assert all(torch.equal(snapshot(other)[k], v) for k, v in started.items())


@pytest.mark.parametrize(("weighting", "include_zeroshot", "expected"), [
    ("uniform", False, (1 + 3 + 6) / 3),
    ("linear", False, (1 * 1 + 2 * 3 + 3 * 6) / 6),
    ("exp", False, (1 * 1 + 2 * 3 + 4 * 6) / 7),
    ("reverse_exp", False, (4 * 1 + 2 * 3 + 1 * 6) / 7),
    ("uniform", True, (0 + 1 + 3 + 6) / 4),
])
def test_offline_merge_trains_every_task_from_zero_shot_and_evaluates_the_weighted_merge(weighting,
                                                                                        include_zeroshot, expected):
    """Tasks move the weights by +1, +3, +6 from the zero-shot weights; the evaluated model is their merge with
    FiF's weights (offline_merge.py:101-156), oldest first; one finetuned model alone is evaluated as it is."""
    model, tokenizer = _model()
    method = build_method("offline_merge", dict(PARAMS["offline_merge"], weighting=weighting,
                                                include_zeroshot=include_zeroshot))
    method.setup(model)
    key = "visual.proj"
    zs = snapshot(model)[key]
    for task, amount in enumerate([1.0, 3.0, 6.0]):
        method.begin_task(_context(tokenizer, task))
        assert torch.allclose(model.state_dict()[key], zs)  # always from the zero-shot weights
        _train_like(model, amount)
        method.end_task(_context(tokenizer, task))
        if task == 0:
            first = 0.5 if include_zeroshot else 1.0
            assert torch.allclose(method.eval_model().state_dict()[key], zs + first, atol=1e-6)
    assert torch.allclose(method.eval_model().state_dict()[key], zs + expected, atol=1e-5)


def test_offline_merge_with_ties_merges_the_task_vectors_of_every_task():
    model, tokenizer = _model()
    method = build_method("offline_merge", dict(PARAMS["offline_merge"], operator="ties", density=1.0))
    method.setup(model)
    zeroshot = snapshot(model)
    finetuned = []
    for task, amount in enumerate([0.1, 0.3]):
        method.begin_task(_context(tokenizer, task))
        _train_like(model, amount)
        finetuned.append(snapshot(model))
        method.end_task(_context(tokenizer, task))
    expected = merging.ties(finetuned, zeroshot, 1.0, 1.0)
    merged = method.eval_model().state_dict()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


@pytest.mark.parametrize(("change", "message"), [
    ({"operator": "interpolation", "lines": {"apply": True}}, "lines.apply: LiNeS scales a merged task vector"),
    ({"operator": "breadcrumbs_ties", "top_drop": 0.5, "density": 0.3}, "top_drop: must be in"),
    ({"lines": {"shape": "cubic"}}, "lines.shape"),
    ({"operator": "slerp", "evaluate": "all"}, "evaluate: slerp merges two models only"),
    ({"operator": "model_stock", "train_from": "all"}, "train_from: model_stock merges two models only"),
])
def test_paint_refuses_settings_that_cannot_work_naming_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        build_method("paint", dict(PARAMS["paint"], **change))


def test_offline_merge_refuses_a_two_model_operator_naming_the_key():
    with pytest.raises(ConfigError, match="operator: model_stock merges two models only"):
        build_method("offline_merge", dict(PARAMS["offline_merge"], operator="model_stock"))


def test_patching_starts_from_the_first_model_then_interpolates_with_the_previous_patch():
    model, tokenizer = _model()
    method = build_method("patching", {"alpha": 0.25})
    method.setup(model)
    base = snapshot(model)["visual.proj"]
    method.begin_task(_context(tokenizer, 0))
    _train_like(model, 1.0)
    method.end_task(_context(tokenizer, 0))
    assert torch.allclose(method.patched["visual.proj"], base + 1.0)
    method.begin_task(_context(tokenizer, 1))
    _train_like(model, 1.0)  # trained_2 = patched_1 + 1
    method.end_task(_context(tokenizer, 1))
    assert torch.allclose(method.patched["visual.proj"], base + 0.75 * 1.0 + 0.25 * 2.0)


# -- replay with memories ------------------------------------------------------------------------------


def _rows(tokenizer, items: list[tuple[int, int]], sources: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    batch = _batch(tokenizer, len(items), seed)
    return dict(batch, items=torch.tensor(items), sources=torch.tensor(sources))


def test_derpp_records_new_samples_and_distils_them_when_replayed():
    """Task 1 records each update row's embeddings (not the buffer's or the pool's); in task 2 a replayed sample
    with a record adds alpha * mean_rows (||image - z_image||^2 + ||text - z_text||^2) / 2 to the CLIP loss, and
    replayed samples without a record add nothing."""
    model, tokenizer = _model()
    method = build_method("derpp", {"alpha": 0.7})
    method.setup(model)
    first = _rows(tokenizer, [(0, 1), (0, 2), (0, 3), (1, 9)], [0, 0, 0, 2])
    with torch.no_grad():
        out = model(first["images"], first["texts"])
        assert torch.equal(method.loss(first, out), clip_loss(out))  # nothing recorded yet: no distillation
    method.end_task(_context(tokenizer))
    assert method.codes.tolist() == [1, 2, 3]
    assert torch.equal(method.responses[1], torch.stack([out[0][1], out[1][1]]))
    _perturb_trainable(model)
    second = dict(_rows(tokenizer, [(0, 7), (0, 2), (0, 3), (0, 5)], [0, 1, 1, 1], seed=0))
    second["images"], second["texts"] = first["images"], first["texts"]  # the samples' own pixels and captions
    now = model(second["images"], second["texts"])
    distilled = method.loss(second, now) - clip_loss(now)
    # rows 1 and 2 are replayed and recorded; row 3 is replayed but (0, 5) was never trained on
    expected = sum(((now[0][r] - out[0][r]).square().sum() + (now[1][r] - out[1][r]).square().sum()) / 2
                   for r in (1, 2)) / 2
    assert distilled.item() > 0 and torch.allclose(distilled, 0.7 * expected, rtol=1e-5)
    state = method.state_dict()
    again = build_method("derpp", {"alpha": 0.7})
    again.setup(model)
    again.load_state_dict(state)
    assert torch.equal(again.codes, method.codes) and torch.equal(again.responses, method.responses)
    assert set(again.recording) == set(method.recording) == {7}  # this task's update row, kept mid-task


def test_gdumb_starts_every_task_from_the_base_model_and_trains_on_the_memory_only(tiny_shards, tmp_path):
    """Each task's batches come only from the reservoir memory with that task in it (and the pool's share), and
    the model is the base model again when a task begins."""
    trainer = _trainer(tiny_shards, tmp_path, lambda *a: None, "gdumb", {"memory_size": 10})
    base = snapshot(trainer.model)
    trainer.fit()
    assert trainer.buffer.policy == "reservoir" and len(trainer.buffer.items()) == 10
    memory = {tuple(i) for i in trainer.buffer.items().tolist()}
    assert any(tuple(i) in memory for i in trainer.tasks[0].tolist())  # the memory spans both tasks
    assert any(tuple(i) in memory for i in trainer.tasks[1].tolist())
    trainer.buffer.per_task.pop()  # back to the buffer as task 2 saw it
    batches = trainer._batches(1, STEPS)
    assert batches.counts["buffer"] == 0
    assert {tuple(i) for i in batches.sources["update"].tolist()} == memory
    trainer.method.begin_task(_context(trainer.tokenizer, 1))
    assert all(torch.equal(v, base[k]) for k, v in snapshot(trainer.model).items())
