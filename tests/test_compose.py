"""thaw.commands.compose: conf/ composed with Hydra is exactly the committed params.yaml, overrides compose,
unknown keys are refused by Hydra's struct mode, and every composed variant passes thaw.config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException

from thaw import config
from thaw.commands import compose
from thaw.commands.compose import compose_params
from thaw.config import SECTIONS, ConfigError, Params

# Config-group options whose `path` is `???` or needed by the schema: they compose, but must be given a path.
NEEDS_PATH = {("data", "cifar10"), ("data", "folder"), ("data", "npz"), ("base", "file"), ("base", "keras_app")}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / group).glob("*.yaml"))


def validate_all(tmp_path: Path, text: str) -> Params:
    """Write the composed text and read it back the way the stages do: every section, the seed, and the
    inputs against the paths."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return config.load(path)


def test_composed_defaults_are_the_committed_params_yaml(project_root: Path) -> None:
    """params.yaml is generated from conf/: the two must never drift (run `thaw compose`)."""
    composed = compose_params(project_root / "conf")
    committed = (project_root / "params.yaml").read_text(encoding="utf-8")
    assert composed == committed, "params.yaml is out of date with conf/: run `thaw compose`"


def test_compose_cli_writes_the_same_text(project_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "params.yaml"
    compose.main(["--config-dir", str(project_root / "conf"), "--out", str(out)])
    assert out.read_text(encoding="utf-8") == (project_root / "params.yaml").read_text(encoding="utf-8")


def test_compose_cli_applies_overrides(project_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    compose.main(["unfreeze.layers=4", "--config-dir", str(project_root / "conf"), "--out", str(out)])
    assert config.load(out).unfreeze.layers == 4


def test_committed_params_sections_match_the_schemas(project_root: Path) -> None:
    composed = yaml.safe_load(compose_params(project_root / "conf"))
    assert set(composed) == set(SECTIONS) | {"seed"}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["base=random"], {("base", "kind"): "random", ("base", "path"): None}),
        (
            ["data=npz", "data.path=x.npz"],
            {("data", "source"): "npz", ("data", "path"): "x.npz", ("data", "rows"): None, ("inputs", "data"): "x.npz"},
        ),
        (["unfreeze.layers=3"], {("unfreeze", "layers"): 3}),
        (
            ["data=folder", "data.path=images", "data.rows=200"],
            {("data", "source"): "folder", ("data", "resize"): "crop", ("data", "rows"): 200},
        ),
        (
            ["data=cifar10", "data.path=/c/cifar-10-python.tar.gz"],
            {("data", "source"): "cifar10", ("inputs", "data"): "/c/cifar-10-python.tar.gz", ("inputs", "base"): None},
        ),
        (
            ["base=file", "base.path=base.keras"],
            {("base", "kind"): "file", ("base", "path"): "base.keras", ("inputs", "base"): "base.keras"},
        ),
        (
            ["base=keras_app", "base.path=weights.h5"],
            {
                ("base", "kind"): "keras_app",
                ("base", "application"): "MobileNetV2",
                ("base", "path"): "weights.h5",
                ("inputs", "base"): "weights.h5",
            },
        ),
        (
            ["finetune.lr=0.001", "train_head.epochs=3", "seed=7"],
            {("finetune", "lr"): 0.001, ("train_head", "epochs"): 3},
        ),
        (["tracking.sweep=lr-2026"], {("tracking", "sweep"): "lr-2026"}),
    ],
)
def test_overrides_compose_and_validate(
    project_root: Path, tmp_path: Path, overrides: list[str], expected: dict[tuple[str, str], object]
) -> None:
    text = compose_params(project_root / "conf", overrides)
    raw = yaml.safe_load(text)
    for (section, key), value in expected.items():
        assert raw[section].get(key) == value, (section, key)
    params = validate_all(tmp_path, text)
    for (section, key), value in expected.items():
        parsed = getattr(params, section)
        assert (parsed.get(key) if section == "inputs" else getattr(parsed, key)) == value, (section, key)


def test_override_leaves_the_rest_unchanged(project_root: Path) -> None:
    default = yaml.safe_load(compose_params(project_root / "conf"))
    changed = yaml.safe_load(compose_params(project_root / "conf", ["base=random"]))
    assert changed["base"] == {**default["base"], "kind": "random"}
    assert {k: v for k, v in changed.items() if k != "base"} == {k: v for k, v in default.items() if k != "base"}


@pytest.mark.parametrize("override", ["finetune.lrr=1", "data.sorce=npz", "base.pretrain.lrr=0.1", "nosection.key=1"])
def test_unknown_key_override_is_rejected_by_struct_mode(project_root: Path, override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException, match=rf"Could not override '{key}'"):
        compose_params(project_root / "conf", [override])


def test_appended_unknown_key_composes_but_fails_validation(project_root: Path, tmp_path: Path) -> None:
    """`+key=value` gets past Hydra; the schema check in thaw.config still refuses it."""
    text = compose_params(project_root / "conf", ["+finetune.lrr=1"])
    with pytest.raises(ConfigError, match=r"finetune\.lrr: .*keys of finetune: "):
        validate_all(tmp_path, text)


def test_unknown_group_option_is_rejected(project_root: Path) -> None:
    with pytest.raises(MissingConfigException, match=r"data/nope"):
        compose_params(project_root / "conf", ["data=nope"])


def test_out_of_range_override_composes_but_fails_validation(project_root: Path, tmp_path: Path) -> None:
    text = compose_params(project_root / "conf", ["finetune.lr=0"])
    with pytest.raises(ConfigError, match=r"finetune\.lr = 0\.0 is not allowed"):
        validate_all(tmp_path, text)


def test_every_option_is_known_to_these_tests() -> None:
    assert group_options("data") == ["cifar10", "digits", "folder", "npz"]
    assert group_options("base") == ["file", "glyphs", "keras_app", "random"]


@pytest.mark.parametrize(
    ("group", "option"), [(group, option) for group in ("data", "base") for option in group_options(group)]
)
def test_every_option_validates_once_its_path_is_supplied(
    project_root: Path, tmp_path: Path, group: str, option: str
) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) in NEEDS_PATH:
        overrides.append(f"{group}.path=some/input")
    params = validate_all(tmp_path, compose_params(project_root / "conf", overrides))
    kind = params.data.source if group == "data" else params.base.kind
    assert kind == option


@pytest.mark.parametrize(
    ("group", "option"),
    sorted(NEEDS_PATH),
)
def test_options_that_need_a_path_fail_validation_without_one(
    project_root: Path, tmp_path: Path, group: str, option: str
) -> None:
    text = compose_params(project_root / "conf", [f"{group}={option}"])
    with pytest.raises(ConfigError, match=rf"params\.yaml: {group}\.path needs a value .*-S {group}\.path=\.\.\."):
        validate_all(tmp_path, text)


@pytest.mark.parametrize("option", ["cifar10", "folder", "npz"])
def test_data_options_keep_the_must_supply_marker(project_root: Path, option: str) -> None:
    raw = yaml.safe_load(compose_params(project_root / "conf", [f"data={option}"]))
    assert raw["data"]["path"] == "???"
