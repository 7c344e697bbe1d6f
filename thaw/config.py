"""Typed, validated views of params.yaml, one dataclass per section.

params.yaml is composed from conf/ by Hydra (DVC runs the composition on `dvc exp run`). Each process reads
and validates it once (`load`) into one typed `Params`; stages pass the sections and values their library
calls need. Unknown keys, missing keys, wrong types and out-of-range values are rejected here, before any
heavy work, with the key, the value and what is accepted. The schema carries no defaults: conf/ holds them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from thaw.errors import ConfigError

DATA_SOURCES = ("digits", "cifar10", "folder", "npz")
RESIZE_MODES = ("crop", "pad", "squash", "none")  # how a folder's images reach data.image_size (datasources)
BASE_KINDS = ("glyphs", "random", "file", "keras_app")
STRATEGIES = ("default", "mirrored")


def _require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {accepted}")


def _positive(key: str, value: float) -> None:
    _require(value > 0, key, value, "a number > 0")


def _fraction(key: str, value: float) -> None:
    _require(0 < value < 1, key, value, "a fraction strictly between 0 and 1")


@dataclass
class DataParams:
    source: str
    path: str | None
    rows: int | None
    image_size: int
    val_fraction: float
    test_fraction: float
    resize: str  # one of RESIZE_MODES
    train_per_class: int | None  # labelled training rows per class; the rest of train is unlabelled

    def __post_init__(self) -> None:
        _require(self.source in DATA_SOURCES, "data.source", self.source, f"one of {list(DATA_SOURCES)}")
        if self.source in ("folder", "npz", "cifar10"):
            _require(bool(self.path), "data.path", self.path, f"a path (data={self.source} reads it)")
        if self.rows is not None:
            _require(self.rows >= 10, "data.rows", self.rows, "an integer >= 10, or null for all rows")
        _require(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
        _require(self.resize in RESIZE_MODES, "data.resize", self.resize,
                 f"one of {list(RESIZE_MODES)} (true and false were the names of squash and none before)")  # fmt: skip
        if self.train_per_class is not None:
            _require(self.train_per_class >= 1, "data.train_per_class", self.train_per_class,
                     "an integer >= 1, or null for every training row")  # fmt: skip
        _fraction("data.val_fraction", self.val_fraction)
        _fraction("data.test_fraction", self.test_fraction)
        _require(
            self.val_fraction + self.test_fraction < 1,
            "data.val_fraction + data.test_fraction",
            self.val_fraction + self.test_fraction,
            "a sum < 1 (the rest is the training split)",
        )


@dataclass
class PretrainParams:
    """How the default base is pretrained on the source task (rendered letters)."""

    classes: int
    per_class: int
    epochs: int
    lr: float
    batch_size: int

    def __post_init__(self) -> None:
        _require(2 <= self.classes <= 26, "base.pretrain.classes", self.classes, "an integer from 2 to 26")
        _require(self.per_class >= 2, "base.pretrain.per_class", self.per_class, "an integer >= 2")
        _require(self.epochs >= 1, "base.pretrain.epochs", self.epochs, "an integer >= 1")
        _positive("base.pretrain.lr", self.lr)
        _require(self.batch_size >= 1, "base.pretrain.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class BaseParams:
    """The base: `glyphs` (pretrained here) and `random` are built from `filters` (and `glyphs` pretrained as
    `pretrain` says); `file` and `keras_app` are read from `path`, and leave `filters` and `pretrain` null."""

    kind: str
    path: str | None
    application: str | None
    filters: list[int] | None
    pretrain: PretrainParams | None

    def __post_init__(self) -> None:
        _require(self.kind in BASE_KINDS, "base.kind", self.kind, f"one of {list(BASE_KINDS)}")
        if self.kind == "file":
            _require(bool(self.path), "base.path", self.path, "the path of a saved Keras model (.keras)")
        if self.kind == "keras_app":
            _require(bool(self.application), "base.application", self.application, "a Keras Applications name")
            _require(bool(self.path), "base.path", self.path, "the path of the application's weights file")
        if self.kind in ("glyphs", "random"):
            _require(
                bool(self.filters) and all(f >= 1 for f in self.filters or []),
                "base.filters",
                self.filters,
                f"a non-empty list of positive filter counts (base={self.kind} builds its layers from it)",
            )
        if self.kind == "glyphs":
            _require(self.pretrain is not None, "base.pretrain", self.pretrain, "the pretraining settings")


@dataclass
class TrainHeadParams:
    pool: int  # average-pooling window over the feature map before flattening (its size: global pooling)
    units: int
    dropout: float
    epochs: int
    lr: float
    batch_size: int

    def __post_init__(self) -> None:
        _require(self.pool >= 1, "train_head.pool", self.pool, "an integer >= 1 (the feature map's size: global)")
        _require(self.units >= 1, "train_head.units", self.units, "an integer >= 1")
        _require(0 <= self.dropout < 1, "train_head.dropout", self.dropout, "a number in [0, 1)")
        _require(self.epochs >= 1, "train_head.epochs", self.epochs, "an integer >= 1")
        _positive("train_head.lr", self.lr)
        _require(self.batch_size >= 1, "train_head.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class UnfreezeParams:
    layers: int

    def __post_init__(self) -> None:
        _require(self.layers >= 0, "unfreeze.layers", self.layers, "an integer >= 0 (0 trains the head only)")


@dataclass
class FinetuneParams:
    epochs: int
    lr: float
    batch_size: int

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "finetune.epochs", self.epochs, "an integer >= 1")
        _positive("finetune.lr", self.lr)
        _require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class RuntimeParams:
    """How training runs: TensorFlow's default strategy or data-parallel replicas (MirroredStrategy), how
    many training steps one call into the compiled graph runs, and TensorFlow's thread pools."""

    strategy: str
    devices: list[str] | None  # mirrored: e.g. ["/gpu:0", "/gpu:1"]; null: every GPU, else the CPU
    steps_per_execution: int
    intra_op_threads: int  # 0: TensorFlow's choice (one per core)
    inter_op_threads: int

    def __post_init__(self) -> None:
        _require(self.strategy in STRATEGIES, "runtime.strategy", self.strategy, f"one of {list(STRATEGIES)}")
        if self.devices is not None:
            _require(
                self.strategy == "mirrored", "runtime.devices", self.devices, "null unless runtime.strategy=mirrored"
            )
            _require(len(self.devices) >= 1, "runtime.devices", self.devices, "a non-empty list of device names")
        _require(self.steps_per_execution >= 1, "runtime.steps_per_execution", self.steps_per_execution,
                 "an integer >= 1")  # fmt: skip
        for key in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, key)
            _require(value >= 0, f"runtime.{key}", value, "an integer >= 0 (0: TensorFlow's choice)")


@dataclass
class TrackingParams:
    experiment: str
    sweep: str | None  # set by sweeps: groups this run under the sweep's parent run in MLflow
    registered_model: str  # the Model Registry name a sweep's champion (and `register`) goes to
    register: bool  # also register this run's model (a new version, no alias); sweeps alias their champion

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        _require(bool(self.registered_model.strip()), "tracking.registered_model", self.registered_model,
                 "a non-empty name")  # fmt: skip
        if self.sweep is not None:
            _require(
                bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.sweep)),
                "tracking.sweep",
                self.sweep,
                "null, or a name of letters, digits, '.', '_' and '-'",
            )


INPUT_NAMES = ("data", "base")


@dataclass
class Params:
    """The whole of params.yaml, typed. Its fields carry no defaults on purpose: conf/ is the one source of
    every value (tests/test_config.py fails if a default ever appears here)."""

    seed: int
    data: DataParams
    # The external files this variant reads, by name (`data`, `base`), each tracked by content by dvc.yaml's
    # `input@<name>` stage. Composed from conf/ (the options that read a file set it to their path); empty for
    # the embedded default, and it must name exactly `data.path` and `base.path` (check_inputs).
    inputs: dict[str, str]
    base: BaseParams
    train_head: TrainHeadParams
    unfreeze: UnfreezeParams
    finetune: FinetuneParams
    runtime: RuntimeParams
    tracking: TrackingParams

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        unknown = sorted(set(self.inputs) - set(INPUT_NAMES))
        _require(not unknown, "inputs", self.inputs, f"a mapping with keys among {list(INPUT_NAMES)}")
        check_inputs(self.data, self.base, self.inputs)


SECTIONS = tuple(name for name in Params.__dataclass_fields__ if name != "seed")


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read the whole params file as plain data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root, or pass --params)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def parse(raw: Mapping[str, Any], where: str | Path = "params") -> Params:
    """Validate a whole config (every section, the seed and the inputs) and return it typed.

    Unknown keys, missing keys, wrong types and out-of-range values are refused with the key, the value and
    what is accepted, prefixed by `where` (the file).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        for name in SECTIONS:  # OmegaConf reports a list given for a section without the section's name
            if name in raw and not isinstance(raw[name], Mapping):
                keys = getattr(get_type_hints(Params)[name], "__dataclass_fields__", INPUT_NAMES)
                _require(False, name, raw[name], f"a mapping of keys among {', '.join(f'{name}.{k}' for k in keys)}")
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Params), dict(raw)))  # type: ignore[return-value]
    except MissingMandatoryValue as exc:
        key = exc.full_key
        if key.startswith("inputs."):  # composed as ${data.path} / ${base.path}: name the key to set
            key = f"{key.removeprefix('inputs.')}.path"
        raise ConfigError(f"{where}: {key} needs a value (it is missing or ???): set it, e.g. `{key}=...` in "
                          f"a sweep or `-S {key}=...` with dvc exp run, or add it to conf/") from None  # fmt: skip
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or ""
        schema: type = Params  # the innermost schema on the key's path lists its keys (base.pretrain.*)
        prefix = ""
        for part in key.split("."):
            hint = get_type_hints(schema).get(part)
            hint = next((t for t in (hint, *get_args(hint)) if isinstance(t, type) and is_dataclass(t)), None)
            if hint is None:
                break
            schema, prefix = hint, f"{prefix}{part}."
        if schema is not Params:
            allowed = f" (keys of {prefix[:-1]}: {', '.join(prefix + f for f in schema.__dataclass_fields__)})"
        elif key.split(".", 1)[0] in Params.__dataclass_fields__:
            allowed = ""
        else:
            allowed = f" (top-level keys: {', '.join(Params.__dataclass_fields__)})"
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{where}: {key or 'params'}: {reason}{allowed}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read `path` once and return the validated, typed config."""
    return parse(read_params(path), path)


def check_inputs(data: DataParams, base: BaseParams, inputs: Mapping[str, str]) -> None:
    """Every file the stages read is one DVC tracks: `inputs` names exactly `data.path` and `base.path`.

    A params file edited by hand (a path set without its input) would otherwise let DVC serve stale results
    after the file changes; and a path that no stage reads is refused rather than silently ignored.
    """
    if data.source == "digits" and data.path is not None:
        raise ConfigError(f"data.path = {data.path!r} is not read by data=digits (the embedded default): "
                          "remove it, or choose data=npz, data=folder or data=cifar10")  # fmt: skip
    if base.kind in ("glyphs", "random") and base.path is not None:
        raise ConfigError(f"base.path = {base.path!r} is not read by base={base.kind}: remove it, "
                          "or choose base=file or base=keras_app")  # fmt: skip
    for key, path in (("data", data.path), ("base", base.path)):
        if inputs.get(key) != path:
            raise ConfigError(
                f"inputs.{key} = {inputs.get(key)!r} but {key}.path = {path!r}: they must name the same file, "
                f"so that DVC tracks what the stages read; recompose params.yaml from conf/ "
                f"(`thaw compose`, or `dvc exp run -S {key}.path=...`)"
            )


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (`finetune.lr`), the form MLflow and DVC show."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def declared(params: Params, keys: Sequence[str]) -> dict[str, Any]:
    """The values of `keys`, dotted as in a stage's `params:` list in dvc.yaml (`seed`, `finetune`,
    `train_head.lr`), as plain data keyed by the same names: what the stage's checkpoint is keyed by."""
    picked: dict[str, Any] = {}
    for key in keys:
        value: Any = params
        for part in key.split("."):
            value = getattr(value, part)
        picked[key] = dataclasses.asdict(value) if is_dataclass(value) else value
    return picked
