"""LoRA per task: fresh adapters for every task on the frozen base, kept when the task ends; evaluated
task-agnostically with the average of every task's adapters.

Fomo-in-Flux's `lora_per_task` (Roth, Udandarao et al., NeurIPS 2024 D&B, arXiv 2408.14471;
continual_lib/lora_per_task.py): adapters are re-attached, freshly initialised, for each task (`_attach_adapters`,
`prepare_for_training`), their state is stored at the end of the task (`end_task`, :187-192), and the averaged
adapter is attached for evaluation (`_average_adapter_state`, :213-225: the mean of the stored A matrices and the
mean of the stored B matrices, each separately, so the evaluated update is scale x mean(B) mean(A)).

Not here: FiF's `max_logits_inference` (:239-271), which classifies with every stored adapter and takes the
maximum logit per class; it needs one forward per adapter inside the evaluator, and has no retrieval form.

Each task's adapters start from a generator seeded by (seed, task), so a resumed run re-creates them exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clipflux.methods.adapters import merged_state_dict
from clipflux.methods.base import TaskContext, register
from clipflux.methods.lora import LoRA
from clipflux.methods.paint import on_host
from clipflux.methods.weights import copy_model


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA matrices attached to the model, by name."""
    return {n: p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}


@register("lora_per_task")
class LoRAPerTask(LoRA):
    """LoRA with new adapters every task; the average of all tasks' adapters is evaluated."""

    host_state = ("_plain", "stored")  # the stored adapters wait on the host, as FiF's list of state dicts

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.stored: list[dict[str, torch.Tensor]] = []

    def begin_task(self, task: TaskContext) -> None:
        if task.index == 0:
            return  # the adapters attached in setup are the first task's
        seed = int(np.random.SeedSequence([self.params.seed, task.index]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in adapter_parameters(self.model).items():
                if name.endswith(".lora_A"):
                    fresh = torch.empty(param.shape)
                    torch.nn.init.kaiming_uniform_(fresh, a=5 ** 0.5, generator=generator)  # as `LoRADelta`
                    param.copy_(fresh)
                else:
                    param.zero_()

    def end_task(self, task: TaskContext) -> None:
        self.stored.append(on_host(adapter_parameters(self.model)))

    def eval_model(self) -> torch.nn.Module:
        if not self.stored:
            return super().eval_model()
        shell = copy_model(self.model)  # the adapted model with the averaged adapters, merged
        with torch.no_grad():
            for name, param in adapter_parameters(shell).items():
                param.copy_(torch.stack([s[name] for s in self.stored]).mean(dim=0).to(param.device))
        merged = copy_model(self._plain)
        merged.load_state_dict(merged_state_dict(shell))
        return merged.to(next(self.model.parameters()).device)

    def state_dict(self) -> dict[str, Any]:
        return {"stored": [on_host(s) for s in self.stored]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # back on the host, where the trainer may have moved a loaded state to the training device
        self.stored = [on_host(s) for s in state["stored"]]
