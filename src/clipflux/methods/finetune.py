"""Full finetuning: every parameter of both towers trains on the CLIP loss.

The baseline of Fomo-in-Flux (Roth, Udandarao et al., "A Practitioner's Guide to Continual Multimodal
Pretraining", NeurIPS 2024 D&B, arXiv 2408.14471) and TiC-CLIP's Sequential regime when trained on new
data only (Garg et al., "TiC-CLIP: Continual Training of CLIP Models", ICLR 2024, arXiv 2310.16226).
"""

from __future__ import annotations

from clipflux.methods.base import Method, register


@register("finetune")
class Finetune(Method):
    """Full finetuning (the base class's behaviour, registered by name)."""
