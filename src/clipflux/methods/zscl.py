"""ZSCL: distil the zero-shot model on reference image-text data, pull towards the task's start, and evaluate a
running average of the weights.

Zheng et al., "Preventing Zero-Shot Transfer Degradation in Continual Learning of Vision-Language Models", ICCV
2023 (arXiv 2303.06628), as its code runs it (Thunderbeee/ZSCL, mtil/src/models/finetune.py; the settings of
mtil/scripts/ZSCL.sh: `--image_loss --text_loss --we --avg_freq 100 --l2 1` over 1000 iterations per task):

    loss = CLIP loss + distil(z_ref, z) + distil(z_ref^T, z^T) + l2 * sum_p ||theta_p - theta_p at task start||^2
    z = s * f_img(x) @ g_ref(t)^T,  z_ref = s * f_img_ref(x) @ g_ref(t)^T
    distil(a, b) = T^2 * CE(b / T, softmax(a / T))                       (helpers `distillation`, T = 2)
    weight ensemble: after step i of a task with i % every == 0: n += 1, avg <- (n avg + theta) / (n + 1)

with f_ref, g_ref the zero-shot model's towers (ZSCL's `ref_model`; the text embedding is the reference model's on
both sides, so only the image tower is distilled) and s the student's logit scale. The average restarts every task
from the task's starting weights; it is what is evaluated and what the next task starts from (ZSCL saves the
averaged model and loads it for the next dataset). `we_share` is ZSCL's avg_freq as a share of the task's steps.

Deviation, named: ZSCL draws its reference images (ImageNet) and captions (Conceptual Captions) from a separate
stream; here the reference pairs are the training batch itself, whose FiF mixture holds a share of the captioned
pretraining pool (the data the base model learnt from), so ZSCL costs no extra data pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipflux.config import ConfigError
from clipflux.methods.base import ExtraWork, Method, TaskContext, clip_loss, register
from clipflux.methods.weights import clone_tensors, load_weights_, snapshot, trainable, with_weights


@dataclass(frozen=True)
class ZSCLParams:
    """`temperature`: T of the distillation (2); `l2`: the pull to the task's starting weights (1); `we_share`:
    the steps between weight-ensemble updates as a share of the task (ZSCL: 100 of 1000)."""

    temperature: float
    l2: float
    we_share: float

    def validate(self, path: str) -> None:
        if self.temperature <= 0 or self.l2 < 0 or not 0.0 < self.we_share <= 1.0:
            raise ConfigError(f"{path}: need temperature > 0, l2 >= 0, 0 < we_share <= 1; got {self}")


def distillation(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * cross-entropy of the student's logits / T against the teacher's softmax(logits / T), batch mean."""
    return F.cross_entropy(student / temperature, F.softmax(teacher / temperature, dim=1)) * temperature ** 2


@register("zscl")
class ZSCL(Method):
    """CLIP loss, distillation of the zero-shot model, an L2 pull to the task start; the weight ensemble is
    evaluated."""

    Params = ZSCLParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.reference = self._frozen(snapshot(model))  # the zero-shot model
        self.average = snapshot(model)
        self.start = {name: value.detach().clone() for name, value in trainable(model).items()}
        self.averaged, self.step, self.every = 0, 0, 1

    def _frozen(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        reference = with_weights(self.model, state)
        reference.eval().requires_grad_(False)
        return reference

    def begin_task(self, task: TaskContext) -> None:
        if task.index > 0:
            load_weights_(self.model, self.average)  # the next task starts from the averaged weights
        self.average = snapshot(self.model)
        self.start = {name: value.detach().clone() for name, value in trainable(self.model).items()}
        self.averaged, self.step = 0, 0
        self.every = max(1, math.ceil(self.params.we_share * task.steps))

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        image_features, _, logit_scale = out[:3]
        with torch.no_grad():
            ref_images, ref_texts = self.reference(batch["images"], batch["texts"])[:2]
        current, target = logit_scale * image_features @ ref_texts.T, logit_scale * ref_images @ ref_texts.T
        temperature = self.params.temperature
        distil = distillation(target, current, temperature) + distillation(target.T, current.T, temperature)
        pull = sum((F.mse_loss(p, self.start[n], reduction="sum") for n, p in trainable(self.model).items()),
                   torch.zeros(()))  # ZSCL's helpers.l2_loss: mse_loss(..., reduction="sum")
        return clip_loss(out) + distil + self.params.l2 * pull

    def extra_work(self, steps: int, batch_size: int) -> ExtraWork:
        return ExtraWork(weight_passes_per_step=1)  # the running average, at most every step

    def after_step(self) -> None:
        if self.step % self.every == 0:  # ZSCL: `iteration % avg_freq == 0`, after the step
            self.averaged += 1
            n = self.averaged
            with torch.no_grad():
                for name, value in self.model.state_dict().items():
                    if torch.is_floating_point(value):
                        self.average[name] = (self.average[name] * n + value) / (1.0 + n)
                    else:
                        self.average[name] = value.clone()
        self.step += 1

    def eval_model(self) -> torch.nn.Module:
        return with_weights(self.model, self.average)

    def state_dict(self) -> dict[str, Any]:
        return {"reference": snapshot(self.reference), "average": clone_tensors(self.average),
                "start": clone_tensors(self.start), "averaged": self.averaged, "step": self.step,
                "every": self.every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = self._frozen(clone_tensors(state["reference"]))
        self.average, self.start = clone_tensors(state["average"]), clone_tensors(state["start"])
        self.averaged, self.step, self.every = state["averaged"], state["step"], state["every"]
