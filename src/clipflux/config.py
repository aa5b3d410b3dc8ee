"""Typed, strict views of `params.yaml`.

Each top-level section mirrors a dataclass. Loading is strict: an unknown key, a missing key or a value
of the wrong type or range raises `ConfigError` naming the key path, the value and what is allowed, so a
stage stops before doing any work.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clipflux.errors import UserError


class ConfigError(UserError, ValueError):
    """A parameter is unknown, missing or invalid."""


NAME = re.compile(r"[A-Za-z0-9_-]+")  # dataset names: folder names and webdataset-key safe (no dots)


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class WorldConfig:
    """The synthetic world that `download` generates (the embedded default)."""

    seed: int
    scale: float
    image_size: int
    pool_size: int
    train_per_class: int
    test_per_class: int
    shard_size: int

    def validate(self, path: str) -> None:
        _positive(self, path, "scale", "pool_size", "train_per_class", "test_per_class", "shard_size")
        _choice(path + ".image_size", self.image_size, (32, 64, 224))


@dataclass(frozen=True)
class DataConfig:
    """Where the study's data comes from besides the synthetic world (see `clipflux.data.sources`)."""

    world: bool = True  # generate the synthetic world (false: a study on imported datasets only)
    pool: str = "pool"  # the dataset used as pretraining pool and for the mixture's pretraining share
    external: dict[str, str] = field(default_factory=dict)  # imported dataset name -> shard location

    def validate(self, path: str) -> None:
        for name, location in self.external.items():
            if not NAME.fullmatch(name):
                raise ConfigError(f"{path}.external.{name}: a dataset name may use letters, digits, '_' and '-' only")
            if not location:
                raise ConfigError(f"{path}.external.{name}: expected a shard folder or URL, got {location!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which open_clip architecture to build, and where its starting weights come from.

    `pretrained` is a checkpoint file, or an open_clip weight tag of the architecture (e.g. `laion2b_s34b_b79k`)
    fetched from the hub or found in `cache_dir` (see `clipflux.models.load_pretrained`).
    """

    name: str
    pretrained: str | None = None
    cache_dir: str | None = None

    def validate(self, path: str) -> None:
        if not self.name:
            raise ConfigError(f"{path}.name: must be a non-empty open_clip model name")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, then a learning-rate schedule: by default cosine decay to a floor, restarted every
    task; FiF's constant, rsqrt and recovery schedules across tasks as options (see `clipflux.schedules`).

    The defaults of the optional fields are how clipflux pretrains its base model, open_clip's recipe: warmup in
    steps, cosine to zero, no weight decay on biases, norms and the logit scale, torch's AdamW betas and eps.
    FiF trains with `cosine_with_linear_warmup` (configs/experiment/continualfomo_default.yaml:84-87: warmup_perc
    0.1, cosine_lr_mul 0.001; continual_lib/utils/base_continual_learner.py:315-342) and decays every parameter
    (base_continual_learner.py:133-138, 259-275). TiC trains with open_clip's AdamW (params/*/*.yaml:4-5,28: beta1
    0.9, beta2 0.98, eps 1e-6), no clipping (grad_clip_norm None, :37), cosine to zero (lr_cooldown_end 0.0, :58)
    and no warmup on the warm-started steps (scripts/run_medium_basic_sequential.sh:46 and
    run_medium_basic_cumulative.sh:50 pass `--warmup 0`; the released params/*-sequential/*.yaml:95 record
    `warmup: 2000`, a fifth of the first step's 10000, which warmup_after_first can express as a share).

    Attributes:
        lr: the peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warmup steps at the start of each task (when `warmup_share` is null).
        clip_grad_norm: the gradients' global norm is clipped to this; 0 = no clipping.
        batch_size: samples per optimizer step over all ranks (shared by every experiment: it fixes the budget).
        warmup_share: warmup as a share of each task's steps, ceil(share x steps) (FiF's warmup_perc); null = use
            `warmup_steps`.
        warmup_after_first: the warmup share of every task after the first; null = the first task's warmup.
        min_lr_share: the cosine's floor as a share of `lr` (FiF's cosine_lr_mul; 0 = decay to zero).
        weight_decay_on: "matrices": parameters with 2 or more dimensions (open_clip); "all": every parameter (FiF).
        beta1, beta2, eps: AdamW's moment decays and denominator term.
        schedule: the learning rate after the warmup (`clipflux.schedules`): cosine (restarted every task), constant,
            rsqrt, or across the stream rsqrt_with_recovery, cosine_with_recovery, cosine_with_dynamic_recovery
            (FiF's scheduler names: none, rsqrt, rsqrt_with_recovery, cosine_with_linear_warmup_and_recovery,
            cosine_with_linear_warmup_and_dynamic_recovery).
        cooldown_share: constant and rsqrt*: a linear cooldown to zero over ceil(share x steps) at the end of each
            task (FiF's cooldown_perc; its config's default is 0.1); null = none.
        recovery: the recovery schedules' peak after the first task (FiF's recovery_mode): autoregressive,
            continued or recovered.
    """

    lr: float
    weight_decay: float
    warmup_steps: int
    clip_grad_norm: float
    batch_size: int
    warmup_share: float | None = None
    warmup_after_first: float | None = None
    min_lr_share: float = 0.0
    weight_decay_on: Literal["matrices", "all"] = "matrices"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["cosine", "constant", "rsqrt", "rsqrt_with_recovery", "cosine_with_recovery",
                      "cosine_with_dynamic_recovery"] = "cosine"
    cooldown_share: float | None = None
    recovery: Literal["autoregressive", "continued", "recovered"] = "autoregressive"

    def validate(self, path: str) -> None:
        _positive(self, path, "lr", "batch_size", "eps")
        _non_negative(self, path, "weight_decay", "warmup_steps", "clip_grad_norm")
        if self.cooldown_share is not None and self.schedule not in ("constant", "rsqrt", "rsqrt_with_recovery"):
            raise ConfigError(f"{path}.cooldown_share: only constant, rsqrt and rsqrt_with_recovery cool down, "
                              f"not {self.schedule}; set it to null")
        for name in ("warmup_share", "warmup_after_first", "min_lr_share", "beta1", "beta2", "cooldown_share"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"{path}.{name}: must be in [0, 1), got {value!r}")
        if self.warmup_share is not None and self.warmup_steps:
            raise ConfigError(f"{path}.warmup_steps: {self.warmup_steps} and warmup_share {self.warmup_share} both "
                              "set the warmup; set warmup_steps to 0 or warmup_share to null")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How a training run runs: its seed, optimizer, checkpoints, data loading, device, processes, precision and
    compilation. Shared by `pretrain` and `train` (each adds how many samples it trains on) and used by the
    trainer as it is (`clipflux.train.Trainer`).

    `nproc` is read by torchrun in `dvc.yaml`; the stage itself takes its rank and world size from torchrun.
    fp32 without compilation on the CPU is the reference; bf16 and `compile` change the numbers a little
    (still the same on every rerun and resume).
    """

    seed: int
    checkpoint_every: int  # steps between full-state checkpoints
    optim: OptimConfig
    threads: int = 1  # torch threads per process
    workers: int = 0  # data-loader worker processes
    keep_checkpoints: int = 2  # the newest checkpoints kept while training (one once finished)
    # Training images: as stored ("none"), or FiF's RandomResizedCrop (see `data.loader.random_resized_crops`).
    augment: Literal["none", "random_resized_crop"] = "none"
    device: Literal["cpu", "cuda"] = "cpu"  # cuda: one GPU per process (LOCAL_RANK)
    nproc: int = 1  # processes per node (torchrun --nproc-per-node); the global batch is split over all ranks
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of forward and loss, fp32 weights and optimizer
    compile: bool = False  # torch.compile the model
    pin_memory: bool = True  # page-locked batches for faster copies to the GPU (CUDA only)

    def validate(self, path: str) -> None:
        _positive(self, path, "threads", "checkpoint_every", "keep_checkpoints", "nproc")
        _non_negative(self, path, "workers")
        if self.optim.batch_size % self.nproc:
            raise ConfigError(f"{path}.optim.batch_size: {self.optim.batch_size} must be divisible by "
                              f"{path}.nproc ({self.nproc}), as every rank trains on an equal slice of each batch")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    """Contrastive pretraining of the base model on the captioned pool."""

    samples: int

    def validate(self, path: str) -> None:
        _positive(self, path, "samples")
        super().validate(path)


@dataclass(frozen=True)
class MixtureConfig:
    """Shares of each batch drawn from new task data, the replay buffer and the pretraining pool."""

    update: float
    buffer: float
    pretraining: float

    def validate(self, path: str) -> None:
        _non_negative(self, path, "update", "buffer", "pretraining")
        total = self.update + self.buffer + self.pretraining
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{path}: update + buffer + pretraining must sum to 1, got {total:g}")
        if self.update <= 0:
            raise ConfigError(f"{path}.update: must be > 0 (each batch needs new data), got {self.update}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Continual adaptation over the tasks of a stream; shared by every experiment."""

    samples_per_task: int

    def validate(self, path: str) -> None:
        _positive(self, path, "samples_per_task")
        super().validate(path)


@dataclass(frozen=True)
class BudgetConfig:
    """The compute budget of each task, from which every method's steps per task follow (FiF, Table 4).

    Attributes:
        measure: "maf" (FiF's memory-adjusted FLOPs: FLOPs x peak memory relative to full finetuning), "flops"
            (FLOPs alone) or "samples" (no budget: every method trains `train.samples_per_task` samples).
        gflops_per_task: the budget of each task in GFLOPs (at full finetuning's memory for "maf"); None = what
            full finetuning spends on `train.samples_per_task` samples.
    """

    measure: Literal["maf", "flops", "samples"]
    gflops_per_task: float | None = None

    def validate(self, path: str) -> None:
        if self.gflops_per_task is not None and not self.gflops_per_task > 0:
            raise ConfigError(f"{path}.gflops_per_task: must be > 0 or null, got {self.gflops_per_task!r}")


@dataclass(frozen=True)
class StreamConfig:
    """A FiF-format stream file and the number of tasks it is chunked into.

    Attributes:
        file: the stream file (a JSON list of `dataset+++classname`, or of `dataset+++time step` for TiC).
        num_tasks: tasks the list is chunked into (FiF's task.num).
        samples_per_task: full finetuning's samples per task on this stream, the per-step budget C of a TiC
            benchmark (TiC's tic_medium: 4096 x 4500); null = `train.samples_per_task`.
        measure: how the budget is measured for experiments on this stream, overriding `budget.measure`
            ("samples" for TiC, whose regimes all see C samples per step); null = `budget.measure`.
    """

    file: str
    num_tasks: int
    samples_per_task: int | None = None
    measure: Literal["maf", "flops", "samples"] | None = None

    def validate(self, path: str) -> None:
        _positive(self, path, "num_tasks")
        if self.samples_per_task is not None:
            _positive(self, path, "samples_per_task")
        if not self.file.endswith(".json"):
            raise ConfigError(f"{path}.file: expected a streams/*.json file, got {self.file!r}")


@dataclass(frozen=True)
class BufferConfig:
    """The replay buffer: which past samples are kept (see `clipflux.replay.allocation`)."""

    policy: Literal["all", "none", "reservoir", "exp", "equal"] = "all"
    size: int = 0

    def validate(self, path: str) -> None:
        _non_negative(self, path, "size")
        if self.policy in ("reservoir", "exp", "equal") and self.size <= 0:
            raise ConfigError(f"{path}.size: policy {self.policy!r} needs a buffer size > 0, got {self.size}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One run of the study: an update method on a stream with a data mixture and a replay buffer."""

    method: str
    stream: str
    mixture: MixtureConfig
    buffer: BufferConfig = BufferConfig()
    # "base": adapt the base model (FiF); "scratch": a fresh random initialisation drawn from the run's seed, as
    # TiC trains its first time step, and Oracle and Restart every step, from random initialisation.
    init: Literal["base", "scratch"] = "base"
    # OptimConfig keys applied over `train.optim` for this experiment (e.g. TiC's AdamW: beta2, eps, no clipping,
    # warmup_after_first 0); see `Params.train_for`. The batch size stays shared (it fixes the budget).
    optim: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig:
    """Zero-shot evaluation before the stream and after every task (FiF's protocol)."""

    batch_size: int
    threads: int
    seed: int  # draws the evaluation subsets and the validation split
    subset: float  # FiF's validate_on_subset: share of each dataset evaluated during the stream (1 = all)
    validation: bool  # FiF's validation_mode: evaluate on held-out training data, never on test data
    split: float  # FiF's train_val_split: share of each class's training data kept for training
    preload: bool = False  # decode the evaluated images once into RAM and reuse them for every model state

    def validate(self, path: str) -> None:
        _positive(self, path, "batch_size", "threads")
        if not 0 < self.subset <= 1:
            raise ConfigError(f"{path}.subset: must be in (0, 1] (1 = full evaluation after every task), got {self.subset!r}")
        if not 0 < self.split < 1:
            raise ConfigError(f"{path}.split: must be in (0, 1) (the training share of each class), got {self.split!r}")


@dataclass(frozen=True)
class StudyConfig:
    """The study as a whole.

    Attributes:
        seeds: every experiment's train and evaluate run over seeds 0..N-1 (added to `train.seed` and to the
            method's own seed, if it has one); the report gives the mean and spread over them. The base model
            is shared (FiF's seeds vary the continual run on one pretrained checkpoint).
    """

    seeds: int = 1

    def validate(self, path: str) -> None:
        _positive(self, path, "seeds")


@dataclass(frozen=True)
class SlurmConfig:
    """A stage's Slurm job (`clipflux.slurm`): one srun task per node, each starting the stage's `nproc` ranks.

    Attributes:
        nodes: nodes of the job; the world is nodes x the stage's nproc ranks (torchrun's rendezvous).
        cpus_per_task: CPUs per node for the node's ranks (sbatch --cpus-per-task).
        gpus_per_node: GPUs per node (sbatch --gpus-per-node; 0: none asked for).
        time: the job's time limit (sbatch --time), e.g. "4:00:00" or "1-12:00:00"; an integer is seconds (YAML
            1.1, which PyYAML reads, turns an unquoted 4:00:00 into 14400, and `dvc exp run -S` writes
            params.yaml back without the quotes).
        partition, account: sbatch --partition / --account (null: the cluster's default).
        signal_seconds: Slurm warns the job this long before its time limit; the stage then checkpoints at the
            end of its step, and the job requeues itself and resumes there (0: no warning, no requeue).
        options: more sbatch options, verbatim (e.g. ["--qos=high", "--mem=64G"]).
    """

    nodes: int = 1
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    time: Any = "1:00:00"
    partition: str | None = None
    account: str | None = None
    signal_seconds: int = 120
    options: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        _positive(self, path, "nodes", "cpus_per_task")
        _non_negative(self, path, "gpus_per_node", "signal_seconds")
        if isinstance(self.time, bool) or not isinstance(self.time, (str, int)) or \
                (isinstance(self.time, int) and self.time <= 0):
            raise ConfigError(f"{path}.time: a Slurm time limit (\"H:MM:SS\", \"D-HH:MM:SS\", minutes as \"90\") or "
                              f"a positive number of seconds, got {self.time!r}")

    @property
    def sbatch_time(self) -> str:
        """`time` as sbatch --time takes it."""
        if isinstance(self.time, str):
            return self.time
        hours, rest = divmod(self.time, 3600)
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


@dataclass(frozen=True)
class LauncherConfig:
    """How the heavy stages (pretrain, train, evaluate) run: here (`local`) or as Slurm jobs (`slurm`).

    Not a dependency of any stage: where a stage runs never changes what it writes (tests/test_cluster.py).

    Attributes:
        kind: local | slurm.
        slurm: the jobs' resources, for every heavy stage.
        stages: per-stage overrides of `slurm`, by stage name (pretrain, train, evaluate).
    """

    kind: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = SlurmConfig()
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        for stage in self.stages:
            _choice(f"{path}.stages", stage, ["evaluate", "pretrain", "train"])
            self.slurm_for(stage)

    def slurm_for(self, stage: str) -> SlurmConfig:
        """`slurm` with the stage's overrides applied, validated.

        Raises:
            ConfigError: an override names an unknown key or has an invalid value.
        """
        merged = dataclasses.asdict(self.slurm) | self.stages.get(stage, {})
        return from_dict(SlurmConfig, merged, f"launcher.stages.{stage}")


@dataclass(frozen=True)
class Params:
    """The whole of `params.yaml`."""

    world: WorldConfig
    model: ModelConfig
    pretrain: PretrainConfig
    streams: dict[str, StreamConfig]
    train: TrainConfig
    budget: BudgetConfig
    methods: dict[str, dict[str, Any]]
    experiments: dict[str, ExperimentConfig]
    evaluate: EvaluateConfig
    data: DataConfig = DataConfig()
    study: StudyConfig = StudyConfig()
    launcher: LauncherConfig = LauncherConfig()

    def validate(self, path: str) -> None:
        # The method names and `methods.<name>` sections are checked by `clipflux.methods.check_params`, where
        # the methods are: reading params.yaml never imports them (nor torch).
        for name, exp in self.experiments.items():
            _choice(f"experiments.{name}.stream", exp.stream, sorted(self.streams))
        if self.data.pool != "pool":  # the world's pool, or an imported dataset
            _choice("data.pool", self.data.pool, ["pool"] + sorted(self.data.external))
        for name in self.experiments:
            self.optim_for(name)  # raises ConfigError naming the bad override

    def optim_for(self, experiment: str) -> OptimConfig:
        """`train.optim` with the experiment's `optim` overrides applied, validated as `train.optim` is.

        Raises:
            ConfigError: an override names an unknown key (or the shared batch size) or has an invalid value.
        """
        where, overrides = f"experiments.{experiment}.optim", self.experiments[experiment].optim
        stream = self.experiments[experiment].stream
        counts_samples = (self.streams[stream].measure or self.budget.measure) == "samples"
        if "batch_size" in overrides and not counts_samples:  # a budget in samples holds at any batch size
            raise ConfigError(f"{where}.batch_size: the batch size is shared by every experiment whose budget is "
                              f"in FLOPs (it fixes the compute budget); set train.optim.batch_size, or "
                              f"streams.{stream}.measure: samples")
        allowed = [name for name in _field_names(OptimConfig) if counts_samples or name != "batch_size"]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys here are {sorted(allowed)}")
        return from_dict(OptimConfig, dataclasses.asdict(self.train.optim) | overrides, where)

    def train_for(self, experiment: str) -> TrainConfig:
        """`train` as the experiment runs it (and records it): with its effective optimizer (`optim_for`)."""
        return dataclasses.replace(self.train, optim=self.optim_for(experiment))


# --------------------------------------------------------------------------------------------------
# Loading


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and validate `params.yaml`.

    Args:
        path: the parameters file.

    Returns:
        The typed parameters.

    Raises:
        ConfigError: naming the offending key, its value and what is allowed.
    """
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return from_dict(Params, raw, "")


def from_dict(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from a plain mapping, strictly.

    Args:
        cls: a dataclass type whose fields are annotated with supported types.
        raw: the mapping read from YAML.
        path: the dotted key path of `raw`, for error messages ("" at the top).

    Returns:
        An instance of `cls`, validated by its `validate(path)` method if it has one.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or '<top>'}: expected a mapping of {_field_names(cls)}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = _join(path, unknown[0])
        raise ConfigError(f"{key}: unknown key; allowed keys here are {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing key (expected {_type_name(hints[name])})")
            continue
        values[name] = _coerce(hints[name], raw[name], key)
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate(path.rstrip(".") or cls.__name__)
    return obj


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        _choice(key, value, args)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _positive(obj: Any, path: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{path}.{name}: must be > 0, got {value!r}")


def _non_negative(obj: Any, path: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{path}.{name}: must be >= 0, got {value!r}")


def _choice(key: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {allowed}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


__all__ = [
    "BudgetConfig",
    "BufferConfig",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "MixtureConfig",
    "ModelConfig",
    "OptimConfig",
    "Params",
    "PretrainConfig",
    "RunConfig",
    "StreamConfig",
    "TrainConfig",
    "WorldConfig",
    "from_dict",
    "load_params",
]
