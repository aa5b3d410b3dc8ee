"""The headline metrics of FiF: knowledge accumulation (A_KA), zero-shot retention (A_ZS) and their GM.

Following FiF's `results_from_wandb_xid.py`, A_KA is the mean over adaptation datasets and A_ZS the mean
over evaluation-only datasets of each dataset's score (accuracy for classification, Recall@5 for
retrieval), so every dataset weighs the same; GM = sqrt(A_KA * A_ZS).
"""

from __future__ import annotations

import math


def fif_scores(scores: dict[str, float], roles: dict[str, str]) -> dict[str, float]:
    """A_KA, A_ZS and GM from per-dataset scores in percent.

    Args:
        scores: dataset -> its score (accuracy or R@5) in [0, 100].
        roles: dataset -> "adaptation" or "evaluation".
    """
    ka = [s for d, s in scores.items() if roles[d] == "adaptation"]
    zs = [s for d, s in scores.items() if roles[d] == "evaluation"]
    a_ka = sum(ka) / len(ka) if ka else 0.0
    a_zs = sum(zs) / len(zs) if zs else 0.0
    return {"A_KA": a_ka, "A_ZS": a_zs, "GM": math.sqrt(a_ka * a_zs)}
