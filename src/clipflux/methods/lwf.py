"""LwF as TiC-CLIP uses it: distil the previous model's image-text similarity matrix on every batch.

Li and Hoiem, "Learning without Forgetting", ECCV 2016 (arXiv 1606.09282), in the form of Ding et al.,
"Don't Stop Learning: Towards Continual Learning for the CLIP Model" (arXiv 2207.09248), as TiC-CLIP runs it
(Garg et al., ICLR 2024, arXiv 2310.16226, Sec. 4: "KL divergence between the image-text similarity matrix
of last checkpoint and current model on each mini-batch"). The teacher is a frozen copy of the model taken
when a task begins (for the first task, the base model):

    loss = CLIP loss + weight * T^2 * (KL(P_teacher || P_student)_image->text + ..._text->image) / 2

where P are the row-wise softmaxes of the similarity logits divided by the temperature T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from clipflux.config import ConfigError
from clipflux.methods.base import Method, TaskContext, clip_loss, register
from clipflux.methods.weights import clone_tensors, snapshot, with_weights


@dataclass(frozen=True)
class LwFParams:
    """`weight`: of the distillation term; `temperature`: T, softening both similarity distributions."""

    weight: float
    temperature: float

    def validate(self, path: str) -> None:
        if self.weight < 0 or self.temperature <= 0:
            raise ConfigError(f"{path}: need weight >= 0 and temperature > 0, got {self}")


def similarity_logits(out: tuple) -> torch.Tensor:
    """The (images x texts) logits of a CLIP forward: logit_scale * image_features @ text_features.T."""
    image_features, text_features, logit_scale = out[:3]
    return logit_scale * image_features @ text_features.T


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean of the image->text (rows) and text->image (columns) KL(teacher || student), times T^2."""
    def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                        reduction="batchmean", log_target=True)

    return temperature ** 2 * (kl(student, teacher) + kl(student.T, teacher.T)) / 2


@register("lwf")
class LwF(Method):
    """CLIP loss plus distillation of the task-start model's similarity matrices."""

    Params = LwFParams

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.teacher: torch.nn.Module | None = None

    def _freeze_copy(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        teacher = with_weights(self.model, state)
        teacher.eval().requires_grad_(False)
        return teacher

    def begin_task(self, task: TaskContext) -> None:
        self.teacher = self._freeze_copy(snapshot(self.model))

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        with torch.no_grad():
            target = similarity_logits(self.teacher(batch["images"], batch["texts"]))
        distil = similarity_kl(similarity_logits(out), target, self.params.temperature)
        return clip_loss(out) + self.params.weight * distil

    def end_task(self, task: TaskContext) -> None:
        self.teacher = None  # the next task takes a fresh snapshot

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": None if self.teacher is None else snapshot(self.teacher)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher = None if state["teacher"] is None else self._freeze_copy(clone_tensors(state["teacher"]))
