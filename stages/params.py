"""Typed, validated views of params.yaml, one dataclass per section.

params.yaml is composed from conf/ by Hydra (DVC runs the composition on `dvc exp run`); stages read it,
take only their own sections, and pass plain values on. Unknown keys, wrong types and out-of-range values
are rejected here, before any heavy work, with the key, the value and what is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DATA_SOURCES = ("digits", "cifar10", "folder", "npz")
BASE_KINDS = ("glyphs", "random", "file", "keras_app")
STRATEGIES = ("default", "mirrored")


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def _require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {accepted}")


def _positive(key: str, value: float) -> None:
    _require(value > 0, key, value, "a number > 0")


def _fraction(key: str, value: float) -> None:
    _require(0 < value < 1, key, value, "a fraction strictly between 0 and 1")


@dataclass
class DataParams:
    source: str = "digits"
    path: str | None = None
    rows: int | None = 1000
    image_size: int = 32
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    resize: bool = False
    train_per_class: int | None = 10  # labelled training rows per class; the rest of train is unlabelled

    def __post_init__(self) -> None:
        _require(self.source in DATA_SOURCES, "data.source", self.source, f"one of {list(DATA_SOURCES)}")
        if self.source in ("folder", "npz", "cifar10"):
            _require(bool(self.path), "data.path", self.path, f"a path (data={self.source} reads it)")
        if self.rows is not None:
            _require(self.rows >= 10, "data.rows", self.rows, "an integer >= 10, or null for all rows")
        _require(self.image_size >= 8, "data.image_size", self.image_size, "an integer >= 8")
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

    classes: int = 26
    per_class: int = 100
    epochs: int = 4
    lr: float = 2e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        _require(2 <= self.classes <= 26, "base.pretrain.classes", self.classes, "an integer from 2 to 26")
        _require(self.per_class >= 2, "base.pretrain.per_class", self.per_class, "an integer >= 2")
        _require(self.epochs >= 1, "base.pretrain.epochs", self.epochs, "an integer >= 1")
        _positive("base.pretrain.lr", self.lr)
        _require(self.batch_size >= 1, "base.pretrain.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class BaseParams:
    kind: str = "glyphs"
    path: str | None = None
    application: str | None = None
    filters: list[int] = field(default_factory=lambda: [32, 64, 64, 64])
    pretrain: PretrainParams = field(default_factory=PretrainParams)

    def __post_init__(self) -> None:
        _require(self.kind in BASE_KINDS, "base.kind", self.kind, f"one of {list(BASE_KINDS)}")
        if self.kind == "file":
            _require(bool(self.path), "base.path", self.path, "the path of a saved Keras model (.keras)")
        if self.kind == "keras_app":
            _require(bool(self.application), "base.application", self.application, "a Keras Applications name")
            _require(bool(self.path), "base.path", self.path, "the path of the application's weights file")
        _require(
            len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
            "base.filters",
            self.filters,
            "a non-empty list of positive filter counts",
        )


@dataclass
class TrainHeadParams:
    pool: int = 2  # average-pooling window over the feature map before flattening (its size: global pooling)
    units: int = 128
    dropout: float = 0.3
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 16

    def __post_init__(self) -> None:
        _require(self.pool >= 1, "train_head.pool", self.pool, "an integer >= 1 (the feature map's size: global)")
        _require(self.units >= 1, "train_head.units", self.units, "an integer >= 1")
        _require(0 <= self.dropout < 1, "train_head.dropout", self.dropout, "a number in [0, 1)")
        _require(self.epochs >= 1, "train_head.epochs", self.epochs, "an integer >= 1")
        _positive("train_head.lr", self.lr)
        _require(self.batch_size >= 1, "train_head.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class UnfreezeParams:
    layers: int = 2

    def __post_init__(self) -> None:
        _require(self.layers >= 0, "unfreeze.layers", self.layers, "an integer >= 0 (0 trains the head only)")


@dataclass
class FinetuneParams:
    epochs: int = 8
    lr: float = 1e-4
    batch_size: int = 16

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "finetune.epochs", self.epochs, "an integer >= 1")
        _positive("finetune.lr", self.lr)
        _require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an integer >= 1")


@dataclass
class RuntimeParams:
    """How training runs: TensorFlow's default strategy or data-parallel replicas (MirroredStrategy), how
    many training steps one call into the compiled graph runs, and TensorFlow's thread pools."""

    strategy: str = "default"
    devices: list[str] | None = None  # mirrored: e.g. ["/gpu:0", "/gpu:1"]; null: every GPU, else the CPU
    steps_per_execution: int = 32
    intra_op_threads: int = 0  # 0: TensorFlow's choice (one per core)
    inter_op_threads: int = 0

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
    experiment: str = "thaw"
    sweep: str | None = None  # set by sweeps: groups this run under the sweep's parent run in MLflow

    def __post_init__(self) -> None:
        _require(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        if self.sweep is not None:
            _require(
                bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.sweep)),
                "tracking.sweep",
                self.sweep,
                "null, or a name of letters, digits, '.', '_' and '-'",
            )


@dataclass
class InputsParams:
    """The external files a variant reads, each tracked by content by dvc.yaml's `input@<name>` stage.

    Composed from conf/ (the data and base options that read a file set them to their path); they must name
    exactly the files that `data.path` and `base.path` name, or a changed file would go unnoticed.
    """

    data: str | None = None
    base: str | None = None

    def __post_init__(self) -> None:
        for key in ("data", "base"):
            value = getattr(self, key)
            if value is not None:
                _require(bool(str(value).strip()), f"inputs.{key}", value, "null or a path")


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "inputs": InputsParams,
    "base": BaseParams,
    "train_head": TrainHeadParams,
    "unfreeze": UnfreezeParams,
    "finetune": FinetuneParams,
    "runtime": RuntimeParams,
    "tracking": TrackingParams,
}


def read_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read the whole params file as plain data (used by stages that log every param)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root, or pass --params)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def parse_section(name: str, raw: Any, schema: type[T]) -> T:
    """Check one section against its dataclass schema: unknown keys, types and value ranges."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping, got {raw!r}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        if missing := sorted(OmegaConf.missing_keys(OmegaConf.create(raw))):
            raise ConfigError(
                f"{name}.{missing[0]}: a value must be supplied (it is ???), e.g. {name}.{missing[0]}=..."
            )
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = f"{name}.{exc.full_key}" if getattr(exc, "full_key", None) else name
        allowed = ", ".join(f"{name}.{f}" for f in schema.__dataclass_fields__)  # type: ignore[attr-defined]
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{key}: {reason} (keys of {name}: {allowed})") from None


def load_section(path: str | Path, name: str) -> Any:
    """Read `path` and return section `name` validated against its schema in SECTIONS."""
    try:
        return parse_section(name, read_params(path).get(name), SECTIONS[name])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_params_file(path: str | Path) -> None:
    """Validate every section and the seed of a params file; raise ConfigError on the first problem."""
    data = read_params(path)
    unknown = sorted(set(data) - set(SECTIONS) - {"seed"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; allowed: seed, {', '.join(SECTIONS)}")
    load_seed(path)
    sections = {name: load_section(path, name) for name in SECTIONS}
    try:
        check_inputs(sections["data"], sections["base"], sections["inputs"])
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_inputs(data: DataParams, base: BaseParams, inputs: InputsParams) -> None:
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
        if getattr(inputs, key) != path:
            raise ConfigError(
                f"inputs.{key} = {getattr(inputs, key)!r} but {key}.path = {path!r}: they must name the same file, "
                f"so that DVC tracks what the stages read; recompose params.yaml from conf/ "
                f"(`python -m stages.compose`, or `dvc exp run -S {key}.path=...`)"
            )


def load_seed(path: str | Path) -> int:
    seed = read_params(path).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{path}: seed = {seed!r} is not allowed: expected an integer >= 0")
    return seed


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (`finetune.lr`), the form MLflow and DVC show."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
