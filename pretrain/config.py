"""Typed run configuration: one dataclass per concern, loaded from YAML with dotted overrides.

`load_config("pretrain/configs/demo.yaml", ["optim.lr=1e-4"])` builds a `TrainConfig`. Every value
is checked against its field's type and each dataclass's `__post_init__`; a bad value raises
`ConfigError` with one line naming the dotted key, e.g. `config key optim.lr: must be > 0, got -1`.
Values may read the environment as `${oc.env:NAME}` or `${oc.env:NAME,default}` (pretrain/config_env.py).

Why hand-written coercion (`build_dataclass` / `_coerce`, ~90 lines) rather than pydantic or
OmegaConf (issue #15, item 4; tried pydantic 2.14's TypeAdapter over these dataclasses): in lax mode
it accepts `optim.lr: true` as 1.0 and `zero.stage: "2"`, and ignores unknown keys (`optim.lrr`)
unless every dataclass, including those in data/ and the model and loss modules, carries its
`extra="forbid"` config; strict mode refuses a YAML mapping for a dataclass outright. Its errors
are multi-line with tuple locations and wrap `__post_init__` messages as "Value error, ...", so
keeping our one-line `config key a.b: ...` messages (pinned by tests) would need a translation layer
about as long as the code it replaces, plus a direct dependency. OmegaConf is not installed and
brings its own interpolation grammar and error texts; the one feature wanted from it, `${oc.env:...}`,
is 40 lines in config_env.py.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from clip_pretrain.data.augment import AugmentConfig
from clip_pretrain.data.loader import DataConfig
from clip_pretrain.pretrain.config_env import expand_env
from clip_pretrain.pretrain.ema import EmaConfig
from clip_pretrain.pretrain.losses import LossConfig
from clip_pretrain.pretrain.model import ModelConfig


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key and the fix."""


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay, both measured in samples."""

    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_samples: int = 0
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping
    logit_scale_lr: float | None = None  # own group for logit_scale/bias (no decay, same schedule); null: lr

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be a finite number > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        _check(0 <= self.beta2 < 1, "beta2", f"must be in [0, 1), got {self.beta2}")
        _check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        _check(self.warmup_samples >= 0, "warmup_samples", f"must be >= 0, got {self.warmup_samples}")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 disables), got {self.grad_clip}")
        _check(self.logit_scale_lr is None or self.logit_scale_lr > 0, "logit_scale_lr",
               f"must be > 0, or null for optim.lr, got {self.logit_scale_lr}")


@dataclass
class ZeroConfig:
    """DeepSpeed ZeRO stage and offload; stage 0 is plain data parallelism."""

    stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False  # stage 3 only
    overlap_comm: bool = True
    reduce_bucket_size: int = 50_000_000

    def __post_init__(self) -> None:
        _check(self.stage in (0, 1, 2, 3), "stage", f"must be 0, 1, 2 or 3, got {self.stage}")
        _check(
            not self.offload_params or self.stage == 3,
            "offload_params",
            "parameter offload needs zero.stage=3",
        )
        _check(
            not self.offload_optimizer or self.stage >= 1,
            "offload_optimizer",
            "optimizer offload needs zero.stage >= 1",
        )
        _check(self.reduce_bucket_size > 0, "reduce_bucket_size", "must be > 0")


@dataclass
class CheckpointConfig:
    every_steps: int = 1000  # 0: only at the end and on preemption signals
    keep_last: int = 3
    resume: str = "none"  # "none", "auto" (latest complete checkpoint in the run dir) or a checkpoint dir
    export: bool = True  # write an open_clip .pt/.safetensors under RUN/export at the end

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "every_steps", f"must be >= 0, got {self.every_steps}")
        _check(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")


@dataclass
class LoggingConfig:
    """Where rank 0 logs: RUN/metrics.jsonl always, plus wandb and/or TensorBoard (RUN/tensorboard).
    The wandb_* keys left null take WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY from the environment."""

    every_steps: int = 10
    backends: list[Literal["jsonl", "wandb", "tensorboard"]] = field(default_factory=lambda: ["jsonl", "wandb"])
    wandb_mode: Literal["offline", "online", "disabled"] | None = None  # null: $WANDB_MODE, else online iff a key is set
    wandb_project: str | None = None  # null: $WANDB_PROJECT, else clip-pretrain
    wandb_entity: str | None = None  # null: $WANDB_ENTITY, else your wandb default
    wandb_tags: list[str] = field(default_factory=list)
    wandb_group: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self.every_steps >= 1, "every_steps", f"must be >= 1, got {self.every_steps}")


@dataclass
class EvalConfig:
    """Periodic evaluation during training through eval.run's suite API."""

    suite: str | None = None  # path to an eval suite YAML; None disables
    every_steps: int = 0  # 0: only at the end
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "every_steps", f"must be >= 0, got {self.every_steps}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.suite is None or Path(self.suite).is_file(),
            "suite",
            f"file not found: {self.suite}; give an eval suite YAML such as eval/suites/demo.yaml",
        )


@dataclass
class TrainConfig:
    """Everything one run needs. Global batch = micro_batch x grad_accum x world size."""

    run_dir: str = "runs/default"
    seed: int = 0
    micro_batch: int = 32  # per process, per forward
    grad_accum: int = 1
    total_samples: int = 100_000  # sample budget: sets the step count and the lr schedule
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_nonfinite_steps: int = 5  # stop after this many consecutive non-finite losses
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    zero: ZeroConfig = field(default_factory=ZeroConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)

    def __post_init__(self) -> None:
        _check(self.micro_batch >= 1, "micro_batch", f"must be >= 1, got {self.micro_batch}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.total_samples >= 1, "total_samples", f"must be >= 1, got {self.total_samples}")
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be >= 1")
        _check(bool(self.run_dir), "run_dir", "must not be empty")
        # DeepSpeed 0.19.8 clips ZeRO 1-3 gradients before taking out torch_autocast's fp16 loss
        # scale, so the clip would shrink every update by ~65536x: refuse rather than train wrongly.
        _check(
            not (self.precision == "fp16" and self.zero.stage >= 1 and self.optim.grad_clip > 0),
            "precision",
            "fp16 with zero.stage >= 1 and optim.grad_clip > 0 is not supported (DeepSpeed clips the "
            "still-scaled gradients); use precision=bf16, zero.stage=0, or optim.grad_clip=0",
        )
        if self.data.decode == "gpu" and self.augment.pixel_ops:
            # The device decoder reproduces the random crop only; colour changes stay on the CPU path.
            raise ConfigError(f"config key augment.{self.augment.pixel_ops[0]}: data.decode=gpu only crops on the "
                              "device; use data.decode=cpu for colour augmentation, or set it to 0")
        if self.ema.enabled and self.zero.stage == 3:
            # Each rank holds only its partition of every parameter: the EMA would average shards.
            raise ConfigError("config key ema.decay: EMA needs whole parameters on every rank, which ZeRO-3 "
                              "partitions; use zero.stage <= 2 or ema.decay=0")

    def global_batch(self, world_size: int) -> int:
        return self.micro_batch * self.grad_accum * world_size

    def total_steps(self, world_size: int) -> int:
        """Optimizer steps that cover the sample budget (the last step may overshoot it)."""
        return math.ceil(self.total_samples / self.global_batch(world_size))


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


# --- loading -------------------------------------------------------------------------------------


MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_VALUES = 100_000  # far above any real config; a YAML alias bomb expands past it at once
_INT64 = 2**63


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping with values that disagree
    (PyYAML silently keeps the last). A repeat whose value restates the first one (equal, or a
    mapping holding all of it) is accepted: keeping the last then changes nothing."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, tuple[int, Any]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in first:
                first_line, first_value = first[key]
                if not _restates(self.construct_object(value_node, deep=True), first_value):
                    raise ConfigError(f"key {key!r} given twice with different values (lines {first_line} and "
                                      f"{line}); keep one of them")
            first[key] = (line, self.construct_object(value_node, deep=True))
        return super().construct_mapping(node, deep=deep)


def _restates(later: Any, earlier: Any) -> bool:
    if isinstance(earlier, dict) and isinstance(later, dict):
        return all(name in later and _restates(later[name], value) for name, value in earlier.items())
    return type(later) is type(earlier) and later == earlier


def _parse_yaml(text: str, where: str) -> Any:
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(error).split())[:200]}") from None
    _check_size(value, where)
    return value


def _check_size(value: Any, where: str) -> None:
    """Refuses documents that expand to absurd sizes through aliases (or refer to themselves)."""
    pending, seen = [value], 0
    while pending:
        item = pending.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases referring "
                              "to each other or to themselves); write the values out")
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _check_numbers(value: Any, key: str) -> None:
    """Every float finite and every integer within 64 bits, anywhere in the built config (nan
    passes every `x > 0` check, inf and huge ints blow up later in seeding or the schedule)."""
    def child(name: object) -> str:
        return f"{key}.{name}" if key else str(name)

    if dataclasses.is_dataclass(value):
        for item in dataclasses.fields(value):
            _check_numbers(getattr(value, item.name), child(item.name))
        return
    if isinstance(value, dict):
        for name, item in value.items():
            _check_numbers(item, child(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_numbers(item, f"{key}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key {key}: must be a finite number, got {value}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        raise ConfigError(f"config key {key}: {value} does not fit in a signed 64-bit integer; pass a smaller value")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Reads a YAML file (safe loader), applies dotted `key=value` overrides, builds and validates."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}; see pretrain/configs/ for examples")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {path.stat().st_size} bytes, more than a config needs "
                              f"({MAX_CONFIG_BYTES}); pass the YAML config itself")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
        raw = _parse_yaml(text, f"config file {path}") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
        raw = _expand_env(raw, "")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
        parsed = _parse_yaml(value, f"override {item!r}") if value.strip() else None
        _set_dotted(raw, key.strip(), _expand_env(parsed, key.strip()))
    config = build_dataclass(TrainConfig, raw, prefix="")
    _check_numbers(config, "")
    return config


def config_reference(cls: type = None, prefix: str = "") -> list[str]:
    """Every config key with its type and default, one per line, from the dataclasses themselves
    (what `python -m clip_pretrain.pretrain.train --help` lists)."""
    cls = cls or TrainConfig
    hints, lines = typing.get_type_hints(cls), []
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[item.name]):
            lines += config_reference(hints[item.name], f"{prefix}{item.name}.")
            continue
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        shown = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()
        lines.append(f"  {prefix}{item.name} = {shown}  ({_describe(hints[item.name])})")
    return lines


def _describe(annotation: Any) -> str:
    """A type for people: `fp32 | bf16 | fp16`, `list of str`, `str | null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(option) for option in args)
    if origin in (list, tuple):
        return f"list of {_describe(args[0])}" if args else "list"
    if annotation is type(None):
        return "null"
    return "any" if annotation is Any else _type_name(annotation)


def _expand_env(value: Any, key: str) -> Any:
    try:
        return expand_env(value, key)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    if not all(parents) or not leaf:
        raise ConfigError(f"override {key}: empty part in the dotted key; write e.g. optim.lr=1e-4")
    node = raw
    for part in parents:
        if node.get(part) is None:  # absent, or an empty section (`data:` in the YAML)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[leaf] = value


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    """Builds dataclass `cls` from a mapping, type-checking each field; errors name the dotted key."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"config key {prefix}{unknown[0]}: unknown key; valid keys under {where}: {', '.join(sorted(names))}"
        )
    # Nested sections left out of the YAML are still built here, so their errors name the section.
    missing_sections = {f.name: {} for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name]) and f.name not in raw}
    raw = {**raw, **missing_sections}
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in raw}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        message = str(error)
        field_name = message.split(":", 1)[0]
        key = f"{prefix}{field_name}" if field_name in names else where
        detail = message.split(":", 1)[1].strip() if field_name in names else message
        raise ConfigError(f"config key {key}: {detail}") from None


def _coerce(annotation: Any, value: Any, key: str) -> Any:
    """Checks `value` against a field annotation; converts only where YAML is ambiguous (1e-4)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value if value is not None else {}, f"{key}.")
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(option, value, key)
            except ConfigError as error:
                errors.append(error)
        raise ConfigError(f"config key {key}: {value!r} is not a valid {_type_name(annotation)}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key}: expected null, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_coerce(item_type, item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _is_number(value) and float(value).is_integer():
            return int(float(value))
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _is_number(value):  # PyYAML reads "1e-4" as a string
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"config key {key}: expected {_type_name(annotation)}, got {value!r}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
