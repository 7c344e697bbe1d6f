"""thaw.config: params.yaml is read and validated once into a typed `Params`. Unknown keys, missing keys (or
`???`), wrong types and out-of-range values are refused with the key, the value and what is accepted; the
inputs must name exactly the paths the stages read; and the schema carries no defaults (conf/ holds them).

Valid configs are built from the committed params.yaml and mutated; no test here imports TensorFlow."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from thaw import config
from thaw.commands.compose import compose_params
from thaw.config import (
    INPUT_NAMES,
    SECTIONS,
    BaseParams,
    ConfigError,
    DataParams,
    FinetuneParams,
    Params,
    PretrainParams,
    RuntimeParams,
    TrackingParams,
    TrainHeadParams,
    UnfreezeParams,
    check_inputs,
    flatten,
    read_params,
)
from thaw.errors import ConfigError as ErrorsConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED: dict[str, Any] = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
WHERE = "params.yaml"  # the `where` every parse below names, as `load` names its file


def committed() -> dict[str, Any]:
    """A fresh copy of the committed params.yaml, as plain data, to mutate."""
    return copy.deepcopy(COMMITTED)


def with_values(raw: dict[str, Any] | None = None, **dotted: Any) -> dict[str, Any]:
    """`raw` (default: the committed params) with dotted keys set: with_values(**{"base.pretrain.lr": 0})."""
    raw = committed() if raw is None else raw
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[last] = value
    return raw


def without(key: str, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """`raw` (default: the committed params) with the dotted key removed."""
    raw = committed() if raw is None else raw
    *parents, last = key.split(".")
    node = raw
    for parent in parents:
        node = node[parent]
    del node[last]
    return raw


def parse(raw: dict[str, Any]) -> Params:
    return config.parse(raw, WHERE)


def parse_with(**dotted: Any) -> Params:
    return parse(with_values(**dotted))


def refused(raw: dict[str, Any], match: str) -> str:
    """Parse `raw`, expect a ConfigError whose message (after the `where` prefix) matches, return it."""
    with pytest.raises(ConfigError) as info:
        parse(raw)
    message = str(info.value)
    assert message.startswith(f"{WHERE}: "), message
    assert re.search(match, message), f"{match!r} not in {message!r}"
    return message


def write_params(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def schemas(root: type = Params) -> list[type]:
    """Every dataclass reachable from `root` through its fields' types (Optional, list, dict included)."""
    found: list[type] = []

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if tp in found:
                return
            found.append(tp)
            for hint in typing.get_type_hints(tp).values():
                visit(hint)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


# --- the schema -----------------------------------------------------------------------------------------------


def test_schemas_reachable_from_params() -> None:
    assert set(schemas()) == {
        Params,
        DataParams,
        BaseParams,
        PretrainParams,
        TrainHeadParams,
        UnfreezeParams,
        FinetuneParams,
        RuntimeParams,
        TrackingParams,
    }


@pytest.mark.parametrize("schema", schemas(), ids=lambda schema: schema.__name__)
def test_no_schema_field_has_a_default(schema: type) -> None:
    """conf/ is the one source of every value: a default here would silently fill a key conf/ lacks."""
    defaulted = [
        field.name
        for field in dataclasses.fields(schema)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    ]
    assert not defaulted, f"{schema.__name__} fields with a default: {defaulted} (set the value in conf/ instead)"


def test_sections_are_the_params_fields_but_the_seed() -> None:
    assert tuple(f.name for f in dataclasses.fields(Params) if f.name != "seed") == SECTIONS
    assert INPUT_NAMES == ("data", "base")


def test_config_error_is_the_one_in_thaw_errors() -> None:
    assert ConfigError is ErrorsConfigError
    assert issubclass(ConfigError, ValueError)


# --- the committed params file --------------------------------------------------------------------------------


def test_committed_params_file_is_valid(project_root: Path) -> None:
    params = config.load(project_root / "params.yaml")
    assert isinstance(params, Params)
    assert isinstance(params.data, DataParams)
    assert isinstance(params.base, BaseParams)
    assert isinstance(params.base.pretrain, PretrainParams)
    assert isinstance(params.train_head, TrainHeadParams)
    assert isinstance(params.unfreeze, UnfreezeParams)
    assert isinstance(params.finetune, FinetuneParams)
    assert isinstance(params.runtime, RuntimeParams)
    assert isinstance(params.tracking, TrackingParams)
    assert params.seed == COMMITTED["seed"]
    assert params.inputs == {}
    assert parse(committed()) == params


def test_committed_params_file_lists_every_key_of_every_schema() -> None:
    def keys(schema: type, raw: dict[str, Any], prefix: str) -> None:
        assert set(raw) == {f.name for f in dataclasses.fields(schema)}, prefix or "top level"
        hints = typing.get_type_hints(schema)
        for name, value in raw.items():
            if dataclasses.is_dataclass(hints[name]):
                keys(hints[name], value, f"{prefix}{name}.")

    keys(Params, COMMITTED, "")
    assert COMMITTED["inputs"] == {}  # names only the files a variant reads: none in the default


def test_values_are_read_from_the_mapping() -> None:
    params = parse_with(finetune={"epochs": 7, "lr": 0.25, "batch_size": 3})
    assert params.finetune == FinetuneParams(epochs=7, lr=0.25, batch_size=3)
    params = parse_with(**{"base.kind": "random", "base.filters": [8, 4], "base.pretrain.classes": 5})
    assert (params.base.kind, params.base.filters, params.base.pretrain.classes) == ("random", [8, 4], 5)
    assert params.base.pretrain.per_class == COMMITTED["base"]["pretrain"]["per_class"]


def test_parse_does_not_change_its_input() -> None:
    raw = committed()
    parse(raw)
    assert raw == COMMITTED


def test_yaml_exponent_without_dot_is_accepted_as_a_float(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-3` as a string; the schema must still turn it into the number.
    text = yaml.safe_dump(COMMITTED, sort_keys=False)
    assert text.count("lr: 0.0001\n") == 1
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("lr: 0.0001\n", "lr: 1e-3\n"), encoding="utf-8")
    assert read_params(path)["finetune"]["lr"] == "1e-3"
    assert config.load(path).finetune.lr == pytest.approx(1e-3)


# --- unknown keys ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", [name for name in SECTIONS if name != "inputs"])
def test_unknown_key_is_named_and_allowed_keys_listed(section: str) -> None:
    message = refused(with_values(**{f"{section}.bogus_key": 1}), rf"^{WHERE}: {section}\.bogus_key: ")
    schema = typing.get_type_hints(Params)[section]
    allowed = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(schema))
    assert f"(keys of {section}: {allowed})" in message


def test_unknown_top_level_key_lists_the_top_level_keys() -> None:
    message = refused(with_values(bogus=1), rf"^{WHERE}: bogus: ")
    assert f"(top-level keys: {', '.join(f.name for f in dataclasses.fields(Params))})" in message


def test_unknown_input_name_lists_the_names() -> None:
    refused(
        with_values(inputs={"bogus": "/x"}),
        re.escape("inputs = {'bogus': '/x'} is not allowed: expected a mapping with keys among ['data', 'base']"),
    )


def test_typo_in_a_key_is_rejected() -> None:
    refused(
        with_values(**{"finetune.lrr": 0.1}), r"finetune\.lrr: Key 'lrr' not in .*keys of finetune: .*finetune\.lr\b"
    )


def test_unknown_nested_key_names_the_full_path_and_its_siblings() -> None:
    message = refused(with_values(**{"base.pretrain.bogus": 1}), r"base\.pretrain\.bogus\b")
    allowed = ", ".join(f"base.pretrain.{f.name}" for f in dataclasses.fields(PretrainParams))
    assert f"(keys of base.pretrain: {allowed})" in message


# --- missing keys and `???` -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["train_head.lr", "finetune.lr", "data.source", "base.pretrain.epochs", "seed"])
def test_missing_key_is_refused_naming_it(key: str) -> None:
    refused(
        without(key), rf"^{WHERE}: {re.escape(key)} needs a value \(it is missing or \?\?\?\).*-S {re.escape(key)}="
    )


@pytest.mark.parametrize("key", ["finetune.lr", "data.source", "train_head.epochs", "runtime.strategy"])
def test_unsupplied_mandatory_value_is_rejected(key: str) -> None:
    refused(with_values(**{key: "???"}), rf"^{WHERE}: {re.escape(key)} needs a value .*add it to conf/")


@pytest.mark.parametrize("section", SECTIONS)
def test_missing_section_is_refused_naming_it(section: str) -> None:
    refused(without(section), rf"^{WHERE}: {section} needs a value")


def test_empty_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs a value"):
        config.parse({}, WHERE)


# --- wrong types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("finetune.epochs", "ten", r"finetune\.epochs: Value 'ten' of type 'str' could not be converted to Integer"),
        ("finetune.epochs", 2.5, r"finetune\.epochs: .*could not be converted to Integer"),
        ("finetune.batch_size", True, r"finetune\.batch_size: .*'bool' could not be converted to Integer"),
        ("train_head.lr", "fast", r"train_head\.lr: Value 'fast' .*could not be converted to Float"),
        ("train_head.units", [128], r"train_head\.units: "),
        (
            "data.resize",
            "maybe",
            r"data\.resize = 'maybe' is not allowed: expected one of \['crop', 'pad', 'squash', 'none'\]",
        ),
        (
            "data.resize",
            True,
            r"data\.resize = 'True' is not allowed: .*true and false were the names of squash and none",
        ),
        ("data.rows", "many", r"data\.rows: .*could not be converted to Integer"),
        ("unfreeze.layers", 1.5, r"unfreeze\.layers: .*could not be converted to Integer"),
        ("base.filters", "abc", r"base\.filters: "),
        ("base.filters", [32, "wide"], r"base\.filters"),
        ("base.filters", None, r"base\.filters = None is not allowed: .*base=glyphs builds its layers from it"),
        ("base.pretrain.lr", "slow", r"base\.pretrain\.lr: .*could not be converted to Float"),
        ("base.pretrain", 3, r"base\.pretrain"),
        ("tracking.experiment", None, r"tracking\.experiment: "),
        ("runtime.steps_per_execution", "many", r"runtime\.steps_per_execution: .*could not be converted to Integer"),
    ],
)
def test_wrong_type_is_rejected_with_the_key(key: str, value: Any, match: str) -> None:
    refused(with_values(**{key: value}), match)


@pytest.mark.parametrize("section", SECTIONS)
@pytest.mark.parametrize("value", [[1, 2], "digits", 5, None])
def test_section_that_is_not_a_mapping_is_rejected(section: str, value: Any) -> None:
    refused(
        with_values(**{section: value}),
        rf"^{WHERE}: {section} = {re.escape(repr(value))} is not allowed: expected a mapping of keys among {section}\.",
    )


# --- learning rates and epochs --------------------------------------------------------------------------------


LR_KEYS = ["finetune.lr", "train_head.lr", "base.pretrain.lr"]
EPOCH_KEYS = ["finetune.epochs", "train_head.epochs", "base.pretrain.epochs"]


def value_at(params: Params, key: str) -> Any:
    for part in key.split("."):
        params = getattr(params, part)
    return params


@pytest.mark.parametrize("value", [0, 0.0, -0.001, -5])
@pytest.mark.parametrize("key", LR_KEYS)
def test_zero_or_negative_learning_rate(key: str, value: float) -> None:
    refused(
        with_values(**{key: value}),
        rf"{re.escape(key)} = {re.escape(repr(float(value)))} is not allowed: expected a number > 0",
    )


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("key", EPOCH_KEYS)
def test_zero_or_negative_epochs(key: str, value: int) -> None:
    refused(with_values(**{key: value}), rf"{re.escape(key)} = {value} is not allowed: expected an integer >= 1")


@pytest.mark.parametrize("key", LR_KEYS + EPOCH_KEYS)
def test_smallest_valid_lr_and_epochs_pass(key: str) -> None:
    value = 1 if key.endswith("epochs") else 1e-9
    assert value_at(parse_with(**{key: value}), key) == value


# --- fractions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.1])
@pytest.mark.parametrize("key", ["val_fraction", "test_fraction"])
def test_split_fraction_out_of_range(key: str, value: float) -> None:
    refused(
        with_values(**{f"data.{key}": value}),
        rf"data\.{key} = .* is not allowed: expected a fraction strictly between 0 and 1",
    )


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.9, 0.2)])
def test_split_fractions_must_leave_a_training_split(val: float, test: float) -> None:
    refused(
        with_values(**{"data.val_fraction": val, "data.test_fraction": test}),
        r"data\.val_fraction \+ data\.test_fraction = .* expected a sum < 1",
    )


def test_valid_fractions_pass() -> None:
    data = parse_with(**{"data.val_fraction": 0.45, "data.test_fraction": 0.45}).data
    assert (data.val_fraction, data.test_fraction) == (0.45, 0.45)


@pytest.mark.parametrize("value", [1, 1.0, 1.5, -0.1])
def test_dropout_out_of_range(value: float) -> None:
    refused(with_values(**{"train_head.dropout": value}), r"train_head\.dropout = .* expected a number in \[0, 1\)")


def test_zero_dropout_passes() -> None:
    assert parse_with(**{"train_head.dropout": 0}).train_head.dropout == 0


# --- data -----------------------------------------------------------------------------------------------------


def test_unknown_data_source_lists_the_sources() -> None:
    refused(
        with_values(**{"data.source": "nope"}),
        re.escape("data.source = 'nope' is not allowed: expected one of ['digits', 'cifar10', 'folder', 'npz']"),
    )


@pytest.mark.parametrize("source", ["cifar10", "folder", "npz"])
@pytest.mark.parametrize("path", [None, ""])
def test_file_sources_need_a_path(source: str, path: str | None) -> None:
    refused(
        with_values(**{"data.source": source, "data.path": path}),
        rf"data\.path = .* is not allowed: expected a path \(data={source} reads it\)",
    )


@pytest.mark.parametrize("source", ["cifar10", "folder", "npz"])
def test_file_sources_without_path_key(source: str) -> None:
    refused(without("data.path", with_values(**{"data.source": source})), r"data\.path needs a value")


@pytest.mark.parametrize(
    ("source", "path"), [("folder", "/images"), ("npz", "/x.npz"), ("cifar10", "/cifar.tar.gz"), ("digits", None)]
)
def test_sources_with_what_they_need_pass(source: str, path: str | None) -> None:
    inputs = {"data": path} if path else {}
    data = parse_with(**{"data.source": source, "data.path": path, "inputs": inputs}).data
    assert (data.source, data.path) == (source, path)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("data.rows", 9, r"data\.rows = 9 is not allowed: expected an integer >= 10, or null for all rows"),
        ("data.rows", -1, r"data\.rows = -1 is not allowed"),
        ("data.image_size", 7, r"data\.image_size = 7 is not allowed: expected an integer >= 8"),
        ("data.train_per_class", 0, r"data\.train_per_class = 0 .*an integer >= 1, or null"),
    ],
)
def test_data_ranges(key: str, value: Any, match: str) -> None:
    refused(with_values(**{key: value}), match)


def test_null_rows_and_train_per_class_mean_all_rows() -> None:
    data = parse_with(**{"data.rows": None, "data.train_per_class": None}).data
    assert (data.rows, data.train_per_class) == (None, None)


def test_smallest_valid_data_values_pass() -> None:
    data = parse_with(**{"data.rows": 10, "data.image_size": 8, "data.train_per_class": 1}).data
    assert (data.rows, data.image_size, data.train_per_class) == (10, 8, 1)


# --- base -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_file_base_needs_a_path(path: str | None) -> None:
    refused(
        with_values(**{"base.kind": "file", "base.path": path}),
        r"base\.path = .* expected the path of a saved Keras model \(\.keras\)",
    )


def test_file_base_with_a_path_passes() -> None:
    params = parse_with(**{"base.kind": "file", "base.path": "/b.keras", "inputs": {"base": "/b.keras"}})
    assert params.base.path == "/b.keras"


def test_keras_app_base_needs_application_and_path() -> None:
    app = {
        "base.kind": "keras_app",
        "base.application": "MobileNetV2",
        "base.path": "/w.h5",
        "inputs": {"base": "/w.h5"},
    }
    refused(with_values(**{**app, "base.application": None}), r"base\.application = None .*a Keras Applications name")
    refused(with_values(**{**app, "base.path": None, "inputs": {}}), r"base\.path = None .*weights file")
    base = parse_with(**app).base
    assert (base.application, base.path) == ("MobileNetV2", "/w.h5")


def test_unknown_base_kind_lists_the_kinds() -> None:
    refused(
        with_values(**{"base.kind": "vgg"}),
        re.escape("base.kind = 'vgg' is not allowed: expected one of ['glyphs', 'random', 'file', 'keras_app']"),
    )


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("base.filters", [], r"base\.filters = \[\] .*a non-empty list of positive filter counts"),
        ("base.filters", [32, 0], r"base\.filters = \[32, 0\] is not allowed"),
        ("base.pretrain.classes", 1, r"base\.pretrain\.classes = 1 .*an integer from 2 to 26"),
        ("base.pretrain.classes", 27, r"base\.pretrain\.classes = 27 "),
        ("base.pretrain.per_class", 1, r"base\.pretrain\.per_class = 1 .*an integer >= 2"),
        ("base.pretrain.batch_size", 0, r"base\.pretrain\.batch_size = 0 .*an integer >= 1"),
    ],
)
def test_base_ranges(key: str, value: Any, match: str) -> None:
    refused(with_values(**{key: value}), match)


# --- train_head, unfreeze, finetune, runtime, tracking --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"train_head.units": 0}, r"train_head\.units = 0 .*an integer >= 1"),
        ({"train_head.pool": 0}, r"train_head\.pool = 0 .*an integer >= 1"),
        ({"train_head.batch_size": 0}, r"train_head\.batch_size = 0 .*an integer >= 1"),
        ({"finetune.batch_size": -4}, r"finetune\.batch_size = -4 .*an integer >= 1"),
        ({"unfreeze.layers": -1}, r"unfreeze\.layers = -1 .*an integer >= 0 \(0 trains the head only\)"),
        ({"runtime.strategy": "tpu"}, re.escape("runtime.strategy = 'tpu' is not allowed: expected one of ['default', 'mirrored']")),
        ({"runtime.devices": ["/gpu:0"]}, r"runtime\.devices = \['/gpu:0'\] .*null unless runtime\.strategy=mirrored"),
        ({"runtime.strategy": "mirrored", "runtime.devices": []}, r"runtime\.devices = \[\] .*a non-empty list of device names"),
        ({"runtime.steps_per_execution": 0}, r"runtime\.steps_per_execution = 0 .*an integer >= 1"),
        ({"runtime.intra_op_threads": -1}, r"runtime\.intra_op_threads = -1 .*an integer >= 0 \(0: TensorFlow's choice\)"),
        ({"runtime.inter_op_threads": -2}, r"runtime\.inter_op_threads = -2 .*an integer >= 0"),
        ({"tracking.experiment": "  "}, r"tracking\.experiment = '  ' .*a non-empty name"),
        ({"tracking.sweep": "my sweep"}, r"tracking\.sweep = 'my sweep' .*null, or a name of letters"),
        ({"tracking.sweep": "-leading-dash"}, r"tracking\.sweep = '-leading-dash'"),
    ],
)  # fmt: skip
def test_other_ranges(raw: dict[str, Any], match: str) -> None:
    refused(with_values(**raw), match)


def test_zero_unfrozen_layers_and_named_sweep_pass() -> None:
    params = parse_with(**{"unfreeze.layers": 0, "tracking.sweep": "lr-sweep_2.a"})
    assert (params.unfreeze.layers, params.tracking.sweep) == (0, "lr-sweep_2.a")


def test_mirrored_runtime_with_devices_passes() -> None:
    runtime = parse_with(**{"runtime.strategy": "mirrored", "runtime.devices": ["/gpu:0", "/gpu:1"]}).runtime
    assert (runtime.strategy, runtime.devices) == ("mirrored", ["/gpu:0", "/gpu:1"])
    assert parse_with(**{"runtime.strategy": "mirrored"}).runtime.devices is None  # every GPU


# --- seed and the params file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "match"),
    [
        (-1, r"seed = -1 is not allowed: expected an integer >= 0"),
        (True, r"seed: .*'bool' could not be converted to Integer"),
        (1.5, r"seed: .*could not be converted to Integer"),
        (None, r"seed: "),
        ([1], r"seed: "),
    ],
)
def test_invalid_seed(seed: Any, match: str) -> None:
    refused(with_values(seed=seed), rf"^{WHERE}: {match}")


@pytest.mark.parametrize("seed", [0, 42, 2**31])
def test_valid_seed(seed: int) -> None:
    assert parse_with(seed=seed).seed == seed


def test_load_reads_the_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = write_params(tmp_path, with_values(**{"unfreeze.layers": 4}))
    assert config.load(path).unfreeze.layers == 4
    path = write_params(tmp_path, with_values(**{"unfreeze.layers": -1}))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: unfreeze\.layers = -1 is not allowed"):
        config.load(path)


def test_missing_params_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(missing))}: params file not found"):
        config.load(missing)
    with pytest.raises(ConfigError, match=r"params file not found"):
        read_params(missing)


def test_params_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a mapping of sections, got list"):
        read_params(path)
    with pytest.raises(ConfigError, match=r"expected a mapping of sections, got list"):
        config.load(path)


def test_empty_params_file_reads_as_empty_and_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    assert read_params(path) == {}
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: \w+ needs a value"):
        config.load(path)


def test_parse_without_a_file_names_params() -> None:
    assert config.parse(with_values(**{"unfreeze.layers": 4})).unfreeze.layers == 4
    with pytest.raises(ConfigError, match=r"^params: unfreeze\.bogus: "):
        config.parse(with_values(**{"unfreeze.bogus": 4}))


# --- flatten --------------------------------------------------------------------------------------------------


def test_flatten_gives_dotted_keys() -> None:
    params = {
        "seed": 42,
        "data": {"source": "digits", "path": None},
        "base": {"filters": [32, 64], "pretrain": {"lr": 0.002}},
    }
    assert flatten(params) == {
        "seed": 42,
        "data.source": "digits",
        "data.path": None,
        "base.filters": [32, 64],
        "base.pretrain.lr": 0.002,
    }


def test_flatten_edge_cases() -> None:
    assert flatten({}) == {}
    assert flatten(3, "x") == {"x": 3}
    assert flatten({1: {"a": True}}) == {"1.a": True}


def test_flatten_of_the_committed_params(project_root: Path) -> None:
    flat = flatten(read_params(project_root / "params.yaml"))
    assert "finetune.lr" in flat
    assert "base.pretrain.epochs" in flat
    assert all(not isinstance(value, dict) for value in flat.values())


# --- inputs: every file a stage reads is one DVC tracks -------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "match"),
    [
        ({"data.source": "npz", "data.path": "/d/x.npz"}, r"inputs\.data = None but data\.path = '/d/x\.npz'"),
        ({"data.source": "npz", "data.path": "/d/x.npz", "inputs": {"data": "/d/y.npz"}}, r"inputs\.data = '/d/y\.npz'"),
        ({"inputs": {"data": "/d/x.npz"}}, r"inputs\.data = '/d/x\.npz' but data\.path = None"),
        ({"data.path": "/d/x.npz", "inputs": {"data": "/d/x.npz"}}, r"data\.path = '/d/x\.npz' is not read by data=digits"),
        ({"base.path": "/m/b.keras", "inputs": {"base": "/m/b.keras"}}, r"base\.path = '/m/b\.keras' is not read by base=glyphs"),
        ({"base.kind": "random", "base.path": "/m/b.keras", "inputs": {"base": "/m/b.keras"}}, r"not read by base=random"),
        ({"base.kind": "file", "base.path": "/m/b.keras"}, r"inputs\.base = None but base\.path = '/m/b\.keras'.*recompose"),
        ({"base.kind": "file", "base.path": "/m/b.keras", "inputs": {"data": "/m/b.keras"}}, r"inputs\.data = '/m/b\.keras' but data\.path = None"),
    ],
)  # fmt: skip
def test_inputs_must_name_exactly_the_paths_the_stages_read(dotted: dict[str, Any], match: str) -> None:
    refused(with_values(**dotted), match)


def test_inputs_that_match_the_paths_pass() -> None:
    params = parse_with(**{
        "data.source": "npz", "data.path": "/d/x.npz", "base.kind": "file", "base.path": "/m/b.keras",
        "inputs": {"data": "/d/x.npz", "base": "/m/b.keras"},
    })  # fmt: skip
    assert params.inputs == {"data": "/d/x.npz", "base": "/m/b.keras"}
    check_inputs(params.data, params.base, params.inputs)  # the same check, callable on its own


def test_check_inputs_on_its_own() -> None:
    params = parse(committed())
    check_inputs(params.data, params.base, {})
    with pytest.raises(ConfigError, match=r"^inputs\.base = '/m/b\.keras' but base\.path = None"):
        check_inputs(params.data, params.base, {"base": "/m/b.keras"})


# --- every shipped conf/ variant composes to a config the schema accepts --------------------------------------


def conf_options(group: str) -> list[str]:
    return sorted(path.stem for path in (REPO_ROOT / "conf" / group).glob("*.yaml"))


# Options that read an external file: composed with `path: ???`, they need a path to be given.
PATH_OVERRIDES = {
    ("data", "cifar10"): "/x/cifar-10-python.tar.gz",
    ("data", "folder"): "/x/images",
    ("data", "npz"): "/x/y.npz",
    ("base", "file"): "/x/base.keras",
    ("base", "keras_app"): "/x/weights.h5",
}


def test_every_conf_option_is_known_to_these_tests() -> None:
    assert conf_options("data") == ["cifar10", "digits", "folder", "npz"]
    assert conf_options("base") == ["file", "glyphs", "keras_app", "random"]


@pytest.mark.parametrize(
    ("data", "base"),
    list(itertools.product(conf_options("data"), conf_options("base"))),
    ids=[f"data={d}-base={b}" for d, b in itertools.product(conf_options("data"), conf_options("base"))],
)
def test_every_conf_variant_composes_to_a_valid_config(project_root: Path, data: str, base: str) -> None:
    overrides = [f"data={data}", f"base={base}"]
    overrides += [f"{group}.path={PATH_OVERRIDES[group, option]}" for group, option in
                  (("data", data), ("base", base)) if (group, option) in PATH_OVERRIDES]  # fmt: skip
    params = config.parse(yaml.safe_load(compose_params(project_root / "conf", overrides)), " ".join(overrides))
    assert (params.data.source, params.base.kind) == (data, base)
    expected_inputs = {
        group: PATH_OVERRIDES[group, option]
        for group, option in (("data", data), ("base", base))
        if (group, option) in PATH_OVERRIDES
    }
    assert params.inputs == expected_inputs
    assert (params.data.path, params.base.path) == (expected_inputs.get("data"), expected_inputs.get("base"))


def test_loading_the_config_imports_neither_tensorflow_nor_mlflow(project_root: Path) -> None:
    """Every stage loads the config first: that alone must stay cheap."""
    code = (
        "import sys; from thaw import config; config.load('params.yaml'); "
        "heavy = sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)); assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_file_and_application_bases_need_no_filters_or_pretraining() -> None:
    data = with_values(**{"base.kind": "file", "base.path": "/b.keras", "base.filters": None, "base.pretrain": None})
    data["inputs"] = {"base": "/b.keras"}
    base = parse(data).base
    assert (base.filters, base.pretrain) == (None, None)
    refused(with_values(**{"base.pretrain": None}), r"base\.pretrain = None is not allowed: expected the pretraining")
