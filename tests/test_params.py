"""thaw.params: every section's schema rejects unknown keys, wrong types and out-of-range values, with the key,
the value and what is accepted in the message."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from thaw.config import (
    SECTIONS,
    BaseParams,
    ConfigError,
    DataParams,
    FinetuneParams,
    PretrainParams,
    TrackingParams,
    TrainHeadParams,
    UnfreezeParams,
    check_params_file,
    flatten,
    load_section,
    load_seed,
    parse_section,
    read_params,
)


def write_params(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def load(tmp_path: Path, section: str, raw: Any) -> Any:
    """Validate one section the way a stage does: through a params file on disk."""
    return load_section(write_params(tmp_path, {section: raw}), section)


# --- the committed params file ------------------------------------------------------------------------------------


def test_committed_params_file_is_valid(project_root: Path) -> None:
    path = project_root / "params.yaml"
    sections = {name: load_section(path, name) for name in SECTIONS}
    assert isinstance(sections["data"], DataParams)
    assert isinstance(sections["base"], BaseParams)
    assert isinstance(sections["base"].pretrain, PretrainParams)
    assert isinstance(sections["train_head"], TrainHeadParams)
    assert isinstance(sections["unfreeze"], UnfreezeParams)
    assert isinstance(sections["finetune"], FinetuneParams)
    assert isinstance(sections["tracking"], TrackingParams)
    assert load_seed(path) == read_params(path)["seed"]
    # The committed file lists every key of every schema (no section relies on a silent default).
    raw = read_params(path)
    for name, schema in SECTIONS.items():
        if name == "inputs":  # names only the files a variant reads: none in the default
            assert raw[name] == {}
            continue
        assert set(raw[name]) == {f.name for f in dataclasses.fields(schema)}, name


def test_values_are_read_from_the_file(tmp_path: Path) -> None:
    finetune = load(tmp_path, "finetune", {"epochs": 7, "lr": 0.25, "batch_size": 3})
    assert finetune == FinetuneParams(epochs=7, lr=0.25, batch_size=3)
    base = load(tmp_path, "base", {"kind": "random", "filters": [8, 4], "pretrain": {"classes": 5}})
    assert base.kind == "random"
    assert base.filters == [8, 4]
    assert base.pretrain.classes == 5
    assert base.pretrain.per_class == PretrainParams().per_class


def test_missing_or_null_section_takes_the_defaults(tmp_path: Path) -> None:
    assert load_section(write_params(tmp_path, {"seed": 1}), "unfreeze") == UnfreezeParams()
    assert load(tmp_path, "data", None) == DataParams()


def test_yaml_exponent_without_dot_is_accepted_as_a_float(tmp_path: Path) -> None:
    # YAML 1.1 reads `1e-3` as a string; the schema must still turn it into the number.
    path = tmp_path / "params.yaml"
    path.write_text("finetune:\n  lr: 1e-3\n", encoding="utf-8")
    assert load_section(path, "finetune").lr == pytest.approx(1e-3)


# --- unknown keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_unknown_key_is_named_and_allowed_keys_listed(tmp_path: Path, section: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, section, {"bogus_key": 1})
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {section}.bogus_key:")
    allowed = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(SECTIONS[section]))
    assert f"(keys of {section}: {allowed})" in message


def test_typo_in_a_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"finetune\.lrr: Key 'lrr' not in .*keys of finetune: .*finetune\.lr\b"):
        load(tmp_path, "finetune", {"lrr": 0.1})


def test_unknown_nested_key_names_the_full_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"base\.pretrain\.bogus\b"):
        load(tmp_path, "base", {"pretrain": {"bogus": 1}})


# --- wrong types --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "raw", "match"),
    [
        (
            "finetune",
            {"epochs": "ten"},
            r"finetune\.epochs: Value 'ten' of type 'str' could not be converted to Integer",
        ),
        ("finetune", {"epochs": 2.5}, r"finetune\.epochs: .*could not be converted to Integer"),
        ("finetune", {"batch_size": True}, r"finetune\.batch_size: .*'bool' could not be converted to Integer"),
        ("train_head", {"lr": "fast"}, r"train_head\.lr: Value 'fast' .*could not be converted to Float"),
        ("train_head", {"units": [128]}, r"train_head\.units: "),
        ("data", {"resize": "maybe"}, r"data\.resize: Value 'maybe' is not a valid bool"),
        ("data", {"rows": "many"}, r"data\.rows: .*could not be converted to Integer"),
        ("unfreeze", {"layers": 1.5}, r"unfreeze\.layers: .*could not be converted to Integer"),
        ("base", {"filters": "abc"}, r"base\.filters: "),
        ("base", {"filters": [32, "wide"]}, r"base\.filters"),
        ("base", {"pretrain": {"lr": "slow"}}, r"base\.pretrain\.lr: .*could not be converted to Float"),
        ("base", {"pretrain": 3}, r"base\.pretrain"),
    ],
)
def test_wrong_type_is_rejected_with_the_key(tmp_path: Path, section: str, raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, section, raw)


@pytest.mark.parametrize("raw", [[1, 2], "digits", 5])
def test_section_that_is_not_a_mapping_is_rejected(tmp_path: Path, raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"data must be a mapping, got "):
        load(tmp_path, "data", raw)


# --- learning rates and epochs -----------------------------------------------------------------------------------


LR_KEYS = [("finetune", ("lr",)), ("train_head", ("lr",)), ("base", ("pretrain", "lr"))]
EPOCH_KEYS = [("finetune", ("epochs",)), ("train_head", ("epochs",)), ("base", ("pretrain", "epochs"))]


def nested(keys: tuple[str, ...], value: Any) -> dict:
    raw: Any = value
    for key in reversed(keys):
        raw = {key: raw}
    return raw


@pytest.mark.parametrize("value", [0, 0.0, -0.001, -5])
@pytest.mark.parametrize(("section", "keys"), LR_KEYS)
def test_zero_or_negative_learning_rate(tmp_path: Path, section: str, keys: tuple[str, ...], value: float) -> None:
    dotted = re.escape(".".join((section, *keys)))
    with pytest.raises(
        ConfigError, match=rf"{dotted} = {re.escape(repr(float(value)))} is not allowed: expected a number > 0"
    ):
        load(tmp_path, section, nested(keys, value))


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize(("section", "keys"), EPOCH_KEYS)
def test_zero_or_negative_epochs(tmp_path: Path, section: str, keys: tuple[str, ...], value: int) -> None:
    dotted = re.escape(".".join((section, *keys)))
    with pytest.raises(ConfigError, match=rf"{dotted} = {value} is not allowed: expected an integer >= 1"):
        load(tmp_path, section, nested(keys, value))


@pytest.mark.parametrize(("section", "keys"), LR_KEYS + EPOCH_KEYS)
def test_smallest_valid_lr_and_epochs_pass(tmp_path: Path, section: str, keys: tuple[str, ...]) -> None:
    value = 1 if keys[-1] == "epochs" else 1e-9
    parsed = load(tmp_path, section, nested(keys, value))
    for key in keys:
        parsed = getattr(parsed, key)
    assert parsed == value


# --- fractions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.1])
@pytest.mark.parametrize("key", ["val_fraction", "test_fraction"])
def test_split_fraction_out_of_range(tmp_path: Path, key: str, value: float) -> None:
    with pytest.raises(
        ConfigError, match=rf"data\.{key} = .* is not allowed: expected a fraction strictly between 0 and 1"
    ):
        load(tmp_path, "data", {key: value})


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.9, 0.2)])
def test_split_fractions_must_leave_a_training_split(tmp_path: Path, val: float, test: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.val_fraction \+ data\.test_fraction = .* expected a sum < 1"):
        load(tmp_path, "data", {"val_fraction": val, "test_fraction": test})


def test_valid_fractions_pass(tmp_path: Path) -> None:
    data = load(tmp_path, "data", {"val_fraction": 0.45, "test_fraction": 0.45})
    assert (data.val_fraction, data.test_fraction) == (0.45, 0.45)


@pytest.mark.parametrize("value", [1, 1.0, 1.5, -0.1])
def test_dropout_out_of_range(tmp_path: Path, value: float) -> None:
    with pytest.raises(ConfigError, match=r"train_head\.dropout = .* expected a number in \[0, 1\)"):
        load(tmp_path, "train_head", {"dropout": value})


def test_zero_dropout_passes(tmp_path: Path) -> None:
    assert load(tmp_path, "train_head", {"dropout": 0}).dropout == 0


# --- data ---------------------------------------------------------------------------------------------------------


def test_unknown_data_source_lists_the_sources(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("data.source = 'nope' is not allowed: expected one of ['digits', 'cifar10', 'folder', 'npz']"),
    ):
        load(tmp_path, "data", {"source": "nope"})


@pytest.mark.parametrize("source", ["folder", "npz"])
@pytest.mark.parametrize("path", [None, ""])
def test_file_sources_need_a_path(tmp_path: Path, source: str, path: str | None) -> None:
    with pytest.raises(
        ConfigError, match=rf"data\.path = .* is not allowed: expected a path \(data={source} reads it\)"
    ):
        load(tmp_path, "data", {"source": source, "path": path})


@pytest.mark.parametrize("source", ["cifar10", "folder", "npz"])
def test_file_sources_without_path_key(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.path"):
        load(tmp_path, "data", {"source": source})


@pytest.mark.parametrize(
    ("source", "path"), [("folder", "images"), ("npz", "x.npz"), ("cifar10", "cifar.tar.gz"), ("digits", None)]
)
def test_sources_with_what_they_need_pass(tmp_path: Path, source: str, path: str | None) -> None:
    data = load(tmp_path, "data", {"source": source, "path": path})
    assert (data.source, data.path) == (source, path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"rows": 9}, r"data\.rows = 9 is not allowed: expected an integer >= 10, or null for all rows"),
        ({"rows": -1}, r"data\.rows = -1 is not allowed"),
        ({"image_size": 7}, r"data\.image_size = 7 is not allowed: expected an integer >= 8"),
    ],
)
def test_data_ranges(tmp_path: Path, raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, "data", raw)


def test_null_rows_means_all_rows(tmp_path: Path) -> None:
    assert load(tmp_path, "data", {"rows": None}).rows is None


# --- base ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_file_base_needs_a_path(tmp_path: Path, path: str | None) -> None:
    with pytest.raises(ConfigError, match=r"base\.path = .* expected the path of a saved Keras model \(\.keras\)"):
        load(tmp_path, "base", {"kind": "file", "path": path})


def test_file_base_with_a_path_passes(tmp_path: Path) -> None:
    assert load(tmp_path, "base", {"kind": "file", "path": "b.keras"}).path == "b.keras"


def test_keras_app_base_needs_application_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"base\.application = None .*a Keras Applications name"):
        load(tmp_path, "base", {"kind": "keras_app", "path": "w.h5"})
    with pytest.raises(ConfigError, match=r"base\.path = None .*weights file"):
        load(tmp_path, "base", {"kind": "keras_app", "application": "MobileNetV2"})
    base = load(tmp_path, "base", {"kind": "keras_app", "application": "MobileNetV2", "path": "w.h5"})
    assert base.application == "MobileNetV2"


def test_unknown_base_kind_lists_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape("base.kind = 'vgg' is not allowed: expected one of ['glyphs', 'random', 'file', 'keras_app']"),
    ):
        load(tmp_path, "base", {"kind": "vgg"})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"filters": []}, r"base\.filters = \[\] .*a non-empty list of positive filter counts"),
        ({"filters": [32, 0]}, r"base\.filters = \[32, 0\] is not allowed"),
        ({"pretrain": {"classes": 1}}, r"base\.pretrain\.classes = 1 .*an integer from 2 to 26"),
        ({"pretrain": {"classes": 27}}, r"base\.pretrain\.classes = 27 "),
        ({"pretrain": {"per_class": 1}}, r"base\.pretrain\.per_class = 1 .*an integer >= 2"),
        ({"pretrain": {"batch_size": 0}}, r"base\.pretrain\.batch_size = 0 .*an integer >= 1"),
    ],
)
def test_base_ranges(tmp_path: Path, raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, "base", raw)


# --- train_head, unfreeze, finetune, tracking --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "raw", "match"),
    [
        ("train_head", {"units": 0}, r"train_head\.units = 0 .*an integer >= 1"),
        ("train_head", {"pool": 0}, r"train_head\.pool = 0 .*an integer >= 1"),
        ("data", {"train_per_class": 0}, r"data\.train_per_class = 0 .*an integer >= 1, or null"),
        ("train_head", {"batch_size": 0}, r"train_head\.batch_size = 0 .*an integer >= 1"),
        ("finetune", {"batch_size": -4}, r"finetune\.batch_size = -4 .*an integer >= 1"),
        ("unfreeze", {"layers": -1}, r"unfreeze\.layers = -1 .*an integer >= 0 \(0 trains the head only\)"),
        ("tracking", {"experiment": "  "}, r"tracking\.experiment = '  ' .*a non-empty name"),
        ("tracking", {"sweep": "my sweep"}, r"tracking\.sweep = 'my sweep' .*null, or a name of letters"),
        ("tracking", {"sweep": "-leading-dash"}, r"tracking\.sweep = '-leading-dash'"),
    ],
)
def test_other_ranges(tmp_path: Path, section: str, raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, section, raw)


def test_zero_unfrozen_layers_and_named_sweep_pass(tmp_path: Path) -> None:
    assert load(tmp_path, "unfreeze", {"layers": 0}).layers == 0
    assert load(tmp_path, "tracking", {"sweep": "lr-sweep_2.a"}).sweep == "lr-sweep_2.a"


@pytest.mark.parametrize(("section", "key"), [("finetune", "lr"), ("data", "source"), ("train_head", "epochs")])
def test_unsupplied_mandatory_value_is_rejected(tmp_path: Path, section: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        load(tmp_path, section, {key: "???"})


# --- seed and the params file ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, "42", True, 1.5, None, [1]])
def test_invalid_seed(tmp_path: Path, seed: Any) -> None:
    path = write_params(tmp_path, {"seed": seed})
    with pytest.raises(ConfigError, match=rf"seed = {re.escape(repr(seed))} is not allowed: expected an integer >= 0"):
        load_seed(path)


def test_missing_seed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"seed = None is not allowed"):
        load_seed(write_params(tmp_path, {"data": {}}))


@pytest.mark.parametrize("seed", [0, 42, 2**31])
def test_valid_seed(tmp_path: Path, seed: int) -> None:
    assert load_seed(write_params(tmp_path, {"seed": seed})) == seed


def test_missing_params_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(missing))}: params file not found"):
        load_section(missing, "data")
    with pytest.raises(ConfigError, match=r"params file not found"):
        load_seed(missing)
    with pytest.raises(ConfigError, match=r"params file not found"):
        read_params(missing)


def test_params_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a mapping of sections, got list"):
        read_params(path)


def test_empty_params_file_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("", encoding="utf-8")
    assert read_params(path) == {}


def test_parse_section_without_a_file() -> None:
    assert parse_section("unfreeze", {"layers": 4}, UnfreezeParams).layers == 4
    with pytest.raises(ConfigError, match=r"^unfreeze\.bogus: "):
        parse_section("unfreeze", {"bogus": 4}, UnfreezeParams)


# --- flatten ------------------------------------------------------------------------------------------------------


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


# inputs: every file a stage reads is one DVC tracks -----------------------------------------------------------


def committed_with(tmp_path: Path, **sections: dict) -> Path:
    data = read_params(Path(__file__).resolve().parents[1] / "params.yaml")
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if name != "inputs" else values
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"data": {"source": "npz", "path": "/d/x.npz"}}, r"inputs\.data = None but data\.path = '/d/x\.npz'"),
        ({"data": {"source": "npz", "path": "/d/x.npz"}, "inputs": {"data": "/d/y.npz"}}, r"inputs\.data = '/d/y\.npz'"),
        ({"inputs": {"data": "/d/x.npz"}}, r"inputs\.data = '/d/x\.npz' but data\.path = None"),
        ({"data": {"path": "/d/x.npz"}, "inputs": {"data": "/d/x.npz"}}, r"data\.path = '/d/x\.npz' is not read by data=digits"),
        ({"base": {"path": "/m/b.keras"}, "inputs": {"base": "/m/b.keras"}}, r"base\.path = '/m/b\.keras' is not read by base=glyphs"),
        ({"base": {"kind": "file", "path": "/m/b.keras"}}, r"inputs\.base = None but base\.path = '/m/b\.keras'.*recompose"),
    ],
)  # fmt: skip
def test_inputs_must_name_exactly_the_paths_the_stages_read(tmp_path: Path, sections: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_params_file(committed_with(tmp_path, **sections))


def test_inputs_that_match_the_paths_pass(tmp_path: Path) -> None:
    check_params_file(committed_with(
        tmp_path, data={"source": "npz", "path": "/d/x.npz"}, base={"kind": "file", "path": "/m/b.keras"},
        inputs={"data": "/d/x.npz", "base": "/m/b.keras"},
    ))  # fmt: skip
