"""Update methods, registered by name. Each method lives in its own module, imported here explicitly."""

from clipflux.methods import (  # noqa: F401  (each import registers its method)
    bitfit,
    dora,
    ema,
    ewc,
    finetune,
    lnfit,
    locked_image,
    locked_text,
    lora,
    lwf,
    paint,
    patching,
    si,
    tic_regimes,
    vera,
)
from clipflux.methods.base import REGISTRY, Method, TaskContext, method_params, register

__all__ = ["REGISTRY", "Method", "TaskContext", "build_method", "method_params", "register"]


def build_method(name: str, raw_params: dict | None) -> Method:
    """Instantiate a registered method with its validated hyperparameters."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](method_params(name, raw_params))
