"""Dark Experience Replay++: replay with the model's own earlier responses to the replayed samples.

Buzzega et al., "Dark Experience for General Continual Learning: a Strong, Simple Baseline", NeurIPS 2020
(arXiv 2004.07211), as mammoth runs it (aimagelab/mammoth models/derpp.py, `Derpp.observe`):

    loss = task loss(new batch) + alpha * MSE(f(x_buf), z_buf) + beta * task loss(f(x'_buf), y'_buf)

where z_buf is the network's response to a buffer sample recorded when that sample was trained on.

For CLIP, clipflux reads it so:
- The response z of a sample is its pair of unit embeddings (image and text): CLIP's logits are their
  products, and unlike a similarity row they do not depend on the rest of the batch. The distillation term is
  the mean over the batch's replayed samples that have a recorded response of
  (||image - z_image||^2 + ||text - z_text||^2) / 2.
- beta's term is the mixture's buffer share: replayed samples are in every batch's CLIP loss (FiF's data
  mixture), so `mixture.buffer` sets it; alpha is the only hyperparameter here.
- A sample's recorded response is the one of the last step that trained on it as new data (mammoth records the
  step at which its reservoir takes the sample in); which samples are replayed is the experiment's buffer.
  Recording costs nothing: the responses are the step's own forward, read after the fact.
- The responses wait on the host with the buffer's samples (as the replayed images do), and each step moves the
  rows it replays to the device: the compute budget charges them as it charges the data, not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from clipflux import distributed
from clipflux.config import ConfigError
from clipflux.methods.base import Method, TaskContext, clip_loss, register
from clipflux.replay import SOURCES

UPDATE, BUFFER = SOURCES.index("update"), SOURCES.index("buffer")


@dataclass(frozen=True)
class DERppParams:
    """`alpha`: weight of the distillation of recorded responses (mammoth's --alpha)."""

    alpha: float

    def validate(self, path: str) -> None:
        if self.alpha < 0:
            raise ConfigError(f"{path}.alpha: need alpha >= 0, got {self.alpha}")


def item_codes(items: torch.Tensor) -> torch.Tensor:
    """One int64 per (dataset id, sample index) row."""
    return items[:, 0].long() * (1 << 32) + items[:, 1].long()


@register("derpp")
class DERpp(Method):
    """CLIP loss over the mixed batch plus the distillation of replayed samples' recorded embeddings."""

    Params = DERppParams
    host_state = ("codes", "responses", "recording")

    def setup(self, model: torch.nn.Module) -> None:
        super().setup(model)
        self.codes = torch.empty(0, dtype=torch.int64)  # sorted codes of every recorded sample of past tasks
        self.responses = torch.empty(0, 2, 0)  # (samples, image | text, embedding) in the order of `codes`
        self.recording: dict[int, torch.Tensor] = {}  # this task's: code -> (2, embedding)

    def loss(self, batch: dict[str, torch.Tensor], out: tuple) -> torch.Tensor:
        loss = clip_loss(out)
        if "sources" not in batch:  # a batch without its rows' origin (the compute budget's probe)
            return loss
        image, text = out[0], out[1]
        # The whole batch's rows on every rank, in batch order (one gather each), so every rank records the same
        # responses and normalises by the same count.
        sources, items = distributed.batch_rows(batch["sources"]).cpu(), distributed.batch_rows(batch["items"]).cpu()
        self._record(sources, items, image, text)
        ranks = len(sources) // len(batch["sources"])
        return loss + self.params.alpha * self._distillation(batch, sources, items, ranks, image, text)

    def _record(self, sources: torch.Tensor, items: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> None:
        codes = item_codes(items)
        pairs = torch.stack([distributed.batch_rows(image), distributed.batch_rows(text)], dim=1).float().cpu()
        for row in torch.nonzero(sources == UPDATE).flatten().tolist():
            self.recording[int(codes[row])] = pairs[row].clone()

    def _distillation(self, batch: dict[str, torch.Tensor], sources: torch.Tensor, items: torch.Tensor, ranks: int,
                      image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        zero = image.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) whole when nothing is distilled
        if len(self.codes) == 0:
            return zero
        # Normalised by the whole batch's count, times the ranks, so DDP's mean of gradients is the global mean.
        count = int((self._matches(sources, items) >= 0).sum())
        local = self._matches(batch["sources"], batch["items"])
        rows = torch.nonzero(local >= 0).flatten()
        if count == 0 or len(rows) == 0:
            return zero
        recorded = self.responses[local[rows].cpu()].to(image.device)
        squared = ((image[rows].float() - recorded[:, 0]).square().sum()
                   + (text[rows].float() - recorded[:, 1]).square().sum())
        return squared / 2 / count * ranks

    def _matches(self, sources: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per row, the position of its recorded response in `responses`, or -1 (not replayed, or never recorded)."""
        codes = item_codes(items.cpu())
        at = torch.searchsorted(self.codes, codes).clamp(max=len(self.codes) - 1)
        found = (self.codes[at] == codes) & (sources.cpu() == BUFFER)
        return torch.where(found, at, torch.full_like(at, -1))

    def end_task(self, task: TaskContext) -> None:
        if not self.recording:
            return
        old = dict(zip(self.codes.tolist(), self.responses)) if len(self.codes) else {}
        old.update(self.recording)  # a sample trained on again as new data keeps its newest response
        self.codes = torch.tensor(sorted(old), dtype=torch.int64)
        self.responses = torch.stack([old[c] for c in self.codes.tolist()])
        self.recording = {}

    def state_dict(self) -> dict[str, Any]:
        pending = sorted(self.recording)
        return {"codes": self.codes.clone(), "responses": self.responses.clone(),
                "recording_codes": torch.tensor(pending, dtype=torch.int64),
                "recording": torch.stack([self.recording[c] for c in pending]) if pending else torch.empty(0, 2, 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # back on the host, where the trainer may have moved a loaded state to the training device
        self.codes, self.responses = state["codes"].cpu().clone(), state["responses"].cpu().clone()
        self.recording = {int(c): r.cpu().clone() for c, r in zip(state["recording_codes"].tolist(), state["recording"])}
