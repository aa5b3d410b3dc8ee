"""Update methods, registered by name. Each method lives in its own module, imported here explicitly."""

from clipflux.methods import (  # noqa: F401  (each import registers its method)
    bitfit,
    derpp,
    dora,
    ema,
    ewc,
    finetune,
    gdumb,
    lnfit,
    locked_image,
    locked_text,
    lora,
    lora_per_task,
    lwf,
    mas,
    offline_merge,
    paint,
    patching,
    si,
    tic_regimes,
    vera,
    zscl,
)
from clipflux.config import ConfigError, Params
from clipflux.methods.base import REGISTRY, Method, TaskContext, method_params, register

__all__ = ["REGISTRY", "Method", "TaskContext", "build_method", "check_params", "method_params", "register"]


def check_params(params: Params) -> Params:
    """Check every experiment's method and every `methods.<name>` section against the registry.

    Raises:
        ConfigError: naming the key, the bad value and what is allowed.
    """
    known = sorted(REGISTRY)
    for name, exp in params.experiments.items():
        if exp.method not in REGISTRY:
            raise ConfigError(f"experiments.{name}.method: {exp.method!r} is not allowed; choose one of {known}")
    for name, hyper in params.methods.items():
        if name not in REGISTRY:
            raise ConfigError(f"methods.{name}: {name!r} is not allowed; choose one of {known}")
        method_params(name, hyper)  # raises ConfigError naming the bad key
    return params


def build_method(name: str, raw_params: dict | None) -> Method:
    """Instantiate a registered method with its validated hyperparameters."""
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name](method_params(name, raw_params))
