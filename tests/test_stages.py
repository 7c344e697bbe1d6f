"""The stage wiring: `stages/` holds exactly the dvc.yaml stage modules, each a thin wire over `thaw`; dvc.yaml's
code deps are the modules each stage really runs; the shell (`thaw.stage`) reads the config once and turns bad
input into one clear line and exit status 2, leaving no output behind; the light stages never import
TensorFlow; and every stage's main, run in order with its dvc.yaml command line, writes what the next reads."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from thaw import artifacts, config, shards, stage, transfer
from thaw.config import Params
from thaw.errors import ConfigError
from thaw.inputs import NO_INPUT, fingerprint

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"tensorflow", "keras", "mlflow", "tf_keras"}


# --- layout: what imports what -------------------------------------------------------------------------------------


def thaw_imports(path: Path) -> set[str]:
    """The `thaw` and `stages` modules a file imports (at any depth in the file), as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            root = node.module.split(".")[0]
            if node.module in ("thaw", "stages"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif root in ("thaw", "stages"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in ("thaw", "stages")}
    return found


def module_file(name: str) -> Path:
    path = REPO.joinpath(*name.split(".")).with_suffix(".py")
    return path if path.is_file() else REPO.joinpath(*name.split("."), "__init__.py")


def closure(path: Path) -> set[str]:
    """Every module file `path` imports, directly or through other thaw modules (repo-relative paths)."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        for name in thaw_imports(todo.pop()):
            file = module_file(name)
            rel = file.relative_to(REPO).as_posix()
            if file.is_file() and rel not in seen and file.name != "__init__.py":
                seen.add(rel)
                todo.append(file)
    return seen


def dvc_stages() -> dict[str, dict[str, Any]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: entry.get("do", entry) for name, entry in stages.items()}


def stage_module(entry: dict[str, Any]) -> str:
    words = entry["cmd"].split()
    assert words[:2] == ["python", "-m"] and words[2].startswith("stages."), entry["cmd"]
    return words[2]


def test_stages_holds_exactly_the_dvc_yaml_stage_modules():
    modules = {stage_module(entry) for entry in dvc_stages().values()}
    files = {f"stages.{p.stem}" for p in (REPO / "stages").glob("*.py") if p.name != "__init__.py"}
    assert files == modules


def test_no_stage_imports_another_and_the_library_never_imports_a_stage():
    for path in (REPO / "stages").glob("*.py"):
        assert not {m for m in thaw_imports(path) if m.startswith("stages")}, path.name
    for path in (REPO / "thaw").rglob("*.py"):
        assert not {m for m in thaw_imports(path) if m.startswith("stages")}, path


def test_the_library_has_no_import_cycle():
    graph = {
        p.relative_to(REPO).as_posix(): {
            module_file(m).relative_to(REPO).as_posix() for m in thaw_imports(p) if module_file(m).is_file()
        }
        for p in (REPO / "thaw").rglob("*.py")
    }
    for start in graph:
        todo, seen = list(graph[start]), set()
        while todo:
            node = todo.pop()
            assert node != start, f"import cycle through {start}"
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))


# Code that runs around the stages, not in them: the sweep (its command, its Hydra callback and statistics),
# the `thaw` commands (thaw/commands/: the machine record of `thaw lockcheck` too), the tracking store.
# None of it computes a stage's outputs, so none of it may be in a stage's cache key: an upgrade of it must
# rerun nothing (tests/test_pipeline_e2e.py checks that with a real `dvc status`).
NOT_STAGE_CODE = {"thaw/intervals.py", "thaw/store.py"}
# ...but for `track`, whose output is the MLflow run: where it goes is part of what it computes.
STORE_WRITERS = {"track"}


def test_no_stage_depends_on_sweep_or_process_management_code():
    for name, entry in dvc_stages().items():
        code = {str(dep) for dep in entry["deps"] if str(dep).endswith(".py")}
        allowed = {"thaw/store.py"} if name in STORE_WRITERS else set()
        around = {
            dep for dep in code if dep.startswith(("thaw/commands/", "thaw/sweeps/")) or dep in NOT_STAGE_CODE - allowed
        }
        assert not around, f"dvc.yaml stage {name} depends on code that computes none of its outputs: {around}"


def test_each_stage_depends_on_exactly_the_code_it_runs():
    """A code change must rerun exactly the stages that run the changed module: dvc.yaml lists each stage's
    module and every thaw module it imports, directly or not, and nothing else."""
    for name, entry in dvc_stages().items():
        module = stage_module(entry)
        path = module_file(module)
        expected = {path.relative_to(REPO).as_posix(), *closure(path)}
        code = {dep for dep in entry["deps"] if str(dep).endswith(".py")}
        assert code == expected, f"dvc.yaml stage {name}: code deps differ by {sorted(code ^ expected)}"


def test_each_training_stage_keys_its_checkpoint_by_the_params_dvc_yaml_declares():
    """A training stage's checkpoint key (its PARAMS, config.declared) is the params list of its dvc.yaml
    entry: a value DVC reruns the stage for also makes a kept checkpoint stale, and no other value does."""
    checked = 0
    for name, entry in dvc_stages().items():
        module = importlib.import_module(stage_module(entry))
        declared = [key if isinstance(key, str) else next(iter(key)) for key in entry.get("params", [])]
        if hasattr(module, "PARAMS"):
            assert list(module.PARAMS) == declared, name
            checked += 1
        elif "stage_run(" in module_file(stage_module(entry)).read_text(encoding="utf-8"):
            pytest.fail(f"{name} opens a checkpoint (training.stage_run) but declares no PARAMS to key it by")
    assert checked == 3  # pretrain-base, train-head, finetune
    params = config.load(REPO / "params.yaml")
    picked = config.declared(params, ["seed", "train_head.lr", "finetune"])
    assert picked == {"seed": params.seed, "train_head.lr": params.train_head.lr,
                      "finetune": yaml.safe_load((REPO / "params.yaml").read_text())["finetune"]}  # fmt: skip


def test_stage_modules_are_thin_wires():
    """A stage module defines `main` and nothing else: the work lives in `thaw`."""
    for path in (REPO / "stages").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert defined in ([], ["main"]), f"{path.name} defines {defined}"


# --- the shell ----------------------------------------------------------------------------------------------------


def write_params(folder: Path, **changes: dict[str, Any]) -> Path:
    """The committed params.yaml with some sections' keys changed (inputs recomposed from the paths)."""
    data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    data["inputs"] = {key: data[key]["path"] for key in ("data", "base") if data[key].get("path")}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_parse_reads_the_whole_config_once_typed(tmp_path: Path):
    path = write_params(tmp_path, finetune={"lr": 0.0005})
    args, params = stage.parse(["--params", str(path), "--out", "x.npz"], "doc", "out")
    assert args.out == "x.npz"
    assert isinstance(params, Params)
    assert params == config.load(path)
    assert params.finetune.lr == 0.0005


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"finetune": {"lr": -0.1}}, r"finetune\.lr = -0\.1 is not allowed"),
        ({"train_head": {"epochs": 0}}, r"train_head\.epochs = 0"),
        ({"unfreeze": {"layers": "two"}}, r"unfreeze\.layers"),
        ({"finetune": {"lrr": 0.1}}, r"finetune\.lrr"),
        ({"extra": {"x": 1}}, r"extra: Key 'extra' not in 'Params'"),
    ],
)
def test_every_stage_checks_the_whole_params_file(tmp_path: Path, changes: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        stage.parse(["--params", str(write_params(tmp_path, **changes))], None)


def test_run_turns_a_user_error_into_exit_status_2(caplog: pytest.LogCaptureFixture):
    def main(argv: list[str] | None) -> None:
        raise ConfigError("finetune.lr = 0 is not allowed")

    with pytest.raises(SystemExit) as exit_info:
        stage.run(main, [])
    assert exit_info.value.code == 2
    assert "finetune.lr = 0 is not allowed" in caplog.text

    def buggy(argv: list[str] | None) -> None:
        raise KeyError("a bug is not a user error")

    with pytest.raises(KeyError):
        stage.run(buggy, [])


def test_a_native_crash_after_the_tensorflow_import_keeps_its_stderr():
    """Nothing captures file descriptor 2: what a native library writes before it aborts the process reaches
    the stage's stderr (DVC's log) even with TensorFlow's C++ log silenced."""
    code = textwrap.dedent("""
        import os
        from thaw import imports, stage
        for key, value in imports.QUIET_TENSORFLOW.items():
            os.environ.setdefault(key, value)
        imports.import_tensorflow()
        os.write(2, b"F0000 a native library's last words\\n")
        os.abort()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGABRT, proc.stderr
    assert "a native library's last words" in proc.stderr


def test_the_training_stages_import_tensorflow_through_import_tensorflow():
    """Every stage that runs a network imports TensorFlow the lean way, before any `thaw` module that loads it."""
    for name, entry in dvc_stages().items():
        module = stage_module(entry)
        source = module_file(module).read_text(encoding="utf-8")
        heavy = {"thaw.model", "thaw.training", "thaw.transfer"} & thaw_imports(module_file(module))
        if heavy:
            assert "imports.import_tensorflow()" in source, name
            assert source.index("imports.import_tensorflow()") < source.index("from thaw import model"), name


# --- the light stages as real processes ----------------------------------------------------------------------------

ROWS = 100


def run_stage(workdir: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def light_project(workdir: Path, **data: Any) -> Path:
    """params.yaml with data.rows shrunk, and the fingerprint the `input@data` stage would have left."""
    write_params(workdir, data={"rows": ROWS, "train_per_class": None, **data})
    path = data.get("path")
    artifacts.write_json(workdir / "inputs/data.json", {"kind": "file", "path": path} if path else NO_INPUT)
    return workdir


def ingest(workdir: Path, out: str = "data/raw") -> subprocess.CompletedProcess[str]:
    return run_stage(workdir, "stages.ingest", "--input", "inputs/data.json", "--out", out, "--flow",
                     "reports/flow/ingest.json")  # fmt: skip


def normalize(workdir: Path, raw: str = "data/raw") -> subprocess.CompletedProcess[str]:
    return run_stage(workdir, "stages.normalize", "--raw", raw, "--out", "data/normalized", "--flow",
                     "reports/flow/normalize.json")  # fmt: skip


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_one_line_failure(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert " ERROR " in lines[0] and expected in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where ingest then normalize ran on 100 digits."""
    root = light_project(tmp_path_factory.mktemp("light"))
    assert_ok(ingest(root))
    assert_ok(normalize(root))
    return root


def test_ingest_writes_a_stratified_split_and_its_flow_row(light: Path):
    raw = shards.open_dataset(light / "data/raw")
    images, labels, split = raw.array[:], raw.labels, raw.split
    assert images.shape == (ROWS, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(split, minlength=3).tolist() == [60, 20, 20]
    flow = json.loads((light / "reports/flow/ingest.json").read_text(encoding="utf-8"))
    assert flow["example"] == f"row 0: a 32x32 image with label '{int(labels[0])}'"


def test_ingest_is_byte_reproducible(light: Path):
    """Same params, same bytes: DVC sees an unchanged output and skips the downstream stages."""
    assert_ok(ingest(light, out="again"))
    assert artifacts.path_md5(light / "again") == artifacts.path_md5(light / "data/raw")


def test_normalize_scales_pixels_and_keeps_labels_and_split(light: Path):
    raw, norm = shards.open_dataset(light / "data/raw"), shards.open_dataset(light / "data/normalized")
    assert norm.array.dtype == np.float32
    np.testing.assert_allclose(norm.array[:], raw.array[:] / 255.0, rtol=0, atol=1e-7)
    assert np.array_equal(norm.labels, raw.labels) and np.array_equal(norm.split, raw.split)
    assert norm.class_names == raw.class_names
    flow = json.loads((light / "reports/flow/normalize.json").read_text(encoding="utf-8"))
    assert flow["stage"] == "normalize" and flow["example"].startswith("pixel value ")


def test_ingest_keeps_train_per_class_labels_and_the_rest_unlabelled(tmp_path: Path):
    assert_ok(ingest(light_project(tmp_path, train_per_class=3)))
    raw = shards.open_dataset(tmp_path / "data/raw")
    split, labels = raw.split, raw.labels
    assert len(split) == ROWS  # every image is kept: features are extracted for the unlabelled too
    assert np.bincount(split, minlength=4).tolist() == [30, 20, 20, 30]
    assert all(np.sum((labels == c) & (split == 0)) == 3 for c in range(10))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"source": "nope"}, "data.source = 'nope' is not allowed: expected one of ['digits', 'cifar10', 'folder',"),
        ({"bogus": 1}, "data.bogus: Key 'bogus' not in 'DataParams'"),
        ({"val_fraction": 1.5}, "data.val_fraction = 1.5 is not allowed"),
        ({"source": "npz", "path": None}, "data.path = None is not allowed"),
        ({"source": "npz", "path": "missing.npz"}, "missing.npz: .npz file not found (fix data.path)"),
        ({"source": "folder", "path": "no_such_dir"}, "no_such_dir: image folder not found (fix data.path)"),
        ({"rows": 20, "val_fraction": 0.1, "test_fraction": 0.1}, "split has no samples of class(es)"),
    ],
)
def test_bad_config_or_data_exits_2_with_one_line_and_no_output(tmp_path: Path, data: dict, expected: str):
    proc = ingest(light_project(tmp_path, **data))
    assert_one_line_failure(proc, expected)
    assert proc.stdout == ""
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def test_a_stage_that_does_not_read_the_bad_key_still_refuses_to_run(tmp_path: Path):
    light_project(tmp_path)
    write_params(tmp_path, finetune={"lr": 0})
    assert_one_line_failure(ingest(tmp_path), "finetune.lr = 0")
    assert not (tmp_path / "data").exists()


def test_a_missing_params_file_or_input_fails_cleanly(tmp_path: Path):
    assert_one_line_failure(ingest(tmp_path), "params.yaml: params file not found")
    write_params(tmp_path)
    proc = normalize(tmp_path, raw="nowhere/raw")
    assert_one_line_failure(proc, "nowhere/raw: not a dataset folder")
    assert not (tmp_path / "data").exists()


NO_HEAVY_IMPORTS = textwrap.dedent(
    """
    import runpy, sys

    for argv in (
        ["input", "--path", sys.argv[1], "--out", "fingerprint.json"],
        ["ingest", "--input", "inputs/data.json", "--out", "raw", "--flow", "flow/ingest.json"],
        ["normalize", "--raw", "raw", "--out", "normalized", "--flow", "flow/normalize.json"],
    ):
        sys.argv = argv
        runpy.run_module("stages." + argv[0], run_name="__main__", alter_sys=True)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "tf_keras"})
    assert not heavy, f"the light stages imported {heavy[:10]}"
    """
)


def test_the_light_stages_never_import_tensorflow_keras_or_mlflow(tmp_path: Path):
    light_project(tmp_path)
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"not read, only hashed")
    proc = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, str(tmp_path / "images")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "fingerprint.json").read_text()) == fingerprint(tmp_path / "images")
    assert len(shards.open_dataset(tmp_path / "normalized")) == ROWS


def test_the_input_stage_fails_cleanly_on_a_missing_path(tmp_path: Path):
    write_params(tmp_path)
    proc = run_stage(tmp_path, "stages.input", "--path", str(tmp_path / "gone.npz"), "--out", "out.json")
    assert_one_line_failure(proc, "gone.npz: input not found")
    assert not (tmp_path / "out.json").exists()


# --- training stages fail before training ----------------------------------------------------------------------------


def test_track_refuses_an_unreachable_store_in_one_line_and_writes_nothing(tmp_path: Path):
    """The store probe lives in `track` (and `thaw sweep`), not in the training stages: with a wrong
    MLFLOW_TRACKING_URI, `track` fails at once, naming the store, before it reads or writes anything."""
    write_params(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    outs = ["--variant", "variant.json", "--out", "run.json"]
    ins = [arg for name in ("lock", "finetuned", "reports", "plots", "metrics", "inputs", "raw-meta")
           for arg in (f"--{name}", f"{name}.missing")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "stages.track", *ins, *outs], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_one_line_failure(proc, "unreachable")
    assert not (tmp_path / "variant.json").exists() and not (tmp_path / "run.json").exists()


def pretrain_base_main(tmp_path: Path, params: Path, path: str | None = None) -> None:
    from stages import pretrain_base

    inputs = tmp_path / "inputs.json"
    artifacts.write_json(inputs, {"kind": "file", "path": path} if path else NO_INPUT)
    pretrain_base.main(["--params", str(params), "--input", str(inputs), "--out", str(tmp_path / "base.keras"),
                        "--metrics", str(tmp_path / "m.json")])  # fmt: skip


def test_an_unfreeze_depth_beyond_the_base_is_rejected_before_pretraining(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transfer, "pretrain_on_glyphs", lambda *a, **k: pytest.fail("pretrained first"))
    with pytest.raises(ConfigError, match=r"unfreeze\.layers = 9 .* conv1, conv2, conv3, conv4; BatchNorm stays "
                                          r"frozen\); choose 0\.\.4"):  # fmt: skip
        pretrain_base_main(tmp_path, write_params(tmp_path, unfreeze={"layers": 9}))
    assert not (tmp_path / "base.keras").exists()


def test_a_missing_base_model_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "nope.keras")
    with pytest.raises(ConfigError, match=r"base\.path = .*nope\.keras.*no such model file"):
        pretrain_base_main(tmp_path, write_params(tmp_path, base={"kind": "file", "path": missing}), missing)


UNFREEZE_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.argv = ["unfreeze", "--model", "model.keras", "--frozen-layers", "frozen.csv", "--features", "features",
            "--out", "unfrozen.keras", "--layers", "layers.csv", "--metrics", "unfreeze.json", "--flow", "flow.json"]
runpy.run_module("stages.unfreeze", run_name="__main__", alter_sys=True)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "tf_keras"})
assert not heavy, f"unfreeze imported {heavy[:10]}"
"""


def test_the_unfreeze_stage_runs_without_tensorflow(tmp_path: Path):
    from thaw import freezing, model

    base = model.build_conv_base(16, [4, 8, 8])
    freezing.freeze(base)
    classifier = model.assemble(base, model.build_head((4, 4, 8), 3, 8, 0.0))
    model.save_model(classifier, tmp_path / "model.keras")
    artifacts.write_csv(tmp_path / "frozen.csv", freezing.layer_table(classifier))
    shards.save(tmp_path / "features", "features", np.zeros((30, 4, 4, 8), np.float32), np.zeros(30, np.int64),
                np.zeros(30, np.int8), ["a"])  # fmt: skip
    write_params(tmp_path, unfreeze={"layers": 2})
    proc = subprocess.run([sys.executable, "-c", UNFREEZE_WITHOUT_TENSORFLOW], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = model.load_keras_model(tmp_path / "unfrozen.keras")
    trainable = [layer.name for layer in freezing.weighted_layers(loaded.get_layer(model.BASE_NAME)) if layer.trainable]
    assert trainable == ["conv2", "conv3"]
    assert freezing.layer_table(loaded) == freezing.parse_table(artifacts.read_csv(tmp_path / "layers.csv"))
    assert artifacts.read_json(tmp_path / "unfreeze.json")["trainable_layers"] == 4
    assert artifacts.read_json(tmp_path / "flow.json")["input"] == "30 rows x 4 x 4 x 8"


# --- every stage's main in order, with its dvc.yaml command line -----------------------------------------------------

HISTORY_COLUMNS = ["epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy"]


def dvc_commands() -> tuple[dict[str, str], dict[str, tuple[str, list[str]]]]:
    """dvc.yaml's `paths` vars and each stage's command as (module, argv), vars substituted."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    paths = {key: str(value) for entry in dvc["vars"] for key, value in entry["paths"].items()}
    commands = {}
    for name, entry in dvc["stages"].items():
        if "foreach" in entry:  # the `input@<name>` stages: none in the default variant
            continue
        words = shlex.split(re.sub(r"\$\{paths\.([^}]+)\}", lambda m: paths[m.group(1)], entry["cmd"]))
        commands[name] = (words[2], words[3:])
    return paths, commands


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest .. finetune on 60 digits with one epoch each, every main called in one process, in order."""
    root = tmp_path_factory.mktemp("pipeline")
    here = os.getcwd()
    os.chdir(root)
    try:
        params = write_params(
            root, data={"rows": 60, "train_per_class": 4}, unfreeze={"layers": 2},
            base={"pretrain": {"classes": 4, "per_class": 6, "epochs": 1, "lr": 0.002, "batch_size": 16}},
            train_head={"epochs": 1}, finetune={"epochs": 1},
        )  # fmt: skip
        paths, commands = dvc_commands()
        for name in ("data", "base"):  # the committed fingerprints: this variant reads no external file
            artifacts.write_json(Path(paths["inputs"]) / f"{name}.json", NO_INPUT)
        for name in ("ingest", "normalize", "pretrain-base", "extract-frozen", "train-head", "unfreeze", "finetune"):
            module, argv = commands[name]
            importlib.import_module(module).main(argv)
        yield {"root": root, "paths": paths, "filters": config.load(params).base.filters}
    finally:
        os.chdir(here)
        shutil.rmtree(root / "data", ignore_errors=True)  # the largest files


def read(pipeline: dict[str, Any], path: str) -> Any:
    file = pipeline["root"] / path
    if file.is_dir() and (file / shards.META).is_file():
        return shards.open_dataset(file)
    return artifacts.read_json(file) if file.suffix == ".json" else artifacts.read_csv(file)


@pytest.mark.slow
def test_the_data_and_features_line_up(pipeline: dict[str, Any]):
    normalized, features = (
        read(pipeline, pipeline["paths"]["normalized"]),
        read(pipeline, pipeline["paths"]["features"]),
    )
    assert normalized.array.shape == (60, 32, 32, 3)
    assert features.array.shape == (60, 8, 8, pipeline["filters"][-1])
    assert np.array_equal(features.labels, normalized.labels) and np.array_equal(features.split, normalized.split)
    assert set(np.unique(features.split)) == {0, 1, 2}  # 4 train rows per class: all labelled


@pytest.mark.slow
def test_the_models_load_and_only_the_thawed_layers_moved(pipeline: dict[str, Any]):
    from thaw import model
    from thaw.freezing import weighted_layers

    p, root = pipeline["paths"], pipeline["root"]
    convs = [f"conv{i}" for i in range(1, len(pipeline["filters"]) + 1)]
    base = model.load_keras_model(root / p["base"])
    np.testing.assert_allclose(model.extract_features(base, read(pipeline, p["normalized"]).array[:4]),
                               read(pipeline, p["features"]).array[:4], rtol=1e-5, atol=1e-5)  # fmt: skip
    classifier = model.load_keras_model(root / p["model"], compile=False)
    assert classifier.get_layer(model.BASE_NAME).trainable_weights == []
    unfrozen = model.load_keras_model(root / p["unfrozen"], compile=False)
    assert [layer.name for layer in weighted_layers(unfrozen.get_layer(model.BASE_NAME)) if layer.trainable] == convs[
        -2:
    ]
    finetuned = model.load_keras_model(root / p["finetuned"], compile=False)
    for layer, var in (("conv1", "kernel"), ("bn1", "moving_mean")):
        before = getattr(classifier.get_layer(model.BASE_NAME).get_layer(layer), var).numpy()
        assert np.array_equal(before, getattr(finetuned.get_layer(model.BASE_NAME).get_layer(layer), var).numpy())
    top = convs[-1]
    assert not np.array_equal(classifier.get_layer(model.BASE_NAME).get_layer(top).kernel.numpy(),
                              finetuned.get_layer(model.BASE_NAME).get_layer(top).kernel.numpy())  # fmt: skip


@pytest.mark.slow
def test_the_histories_share_one_epoch_axis(pipeline: dict[str, Any]):
    head, fine = (
        read(pipeline, pipeline["paths"]["head_history"]),
        read(pipeline, pipeline["paths"]["finetune_history"]),
    )
    assert list(head[0]) == list(fine[0]) == HISTORY_COLUMNS
    assert [(r["epoch"], r["phase"]) for r in head + fine] == [("1", "head"), ("2", "finetune")]


@pytest.mark.slow
def test_the_metrics_of_every_stage(pipeline: dict[str, Any]):
    metrics = Path(pipeline["paths"]["metrics"])
    assert read(pipeline, str(metrics / "pretrain.json"))["kind"] == "glyphs"
    head = read(pipeline, str(metrics / "train_head.json"))
    assert set(head) == {"test_loss", "test_accuracy", "loss", "accuracy", "val_loss", "val_accuracy"}
    fine = read(pipeline, str(metrics / "finetune.json"))
    assert set(fine) == set(head) | {"val_rows", "test_rows"}  # for binomial intervals
    assert (fine["val_rows"], fine["test_rows"]) == (10, 10)  # one of the 6 rows per class each
    unfreeze = read(pipeline, str(metrics / "unfreeze.json"))
    blocks = len(pipeline["filters"])
    assert unfreeze["trainable_layers"] == 2 + 2  # two convs and the head's two dense layers
    assert unfreeze["frozen_layers"] == (blocks - 2) + blocks  # the other convs and every BatchNorm


@pytest.mark.slow
def test_the_layer_table_confusion_pairs_and_flow_rows(pipeline: dict[str, Any]):
    p = pipeline["paths"]
    layers = read(pipeline, p["layers"])
    assert list(layers[0]) == ["part", "layer", "type", "trainable", "params", "trainable_params"]
    assert [r["layer"] for r in layers if r["trainable"] == "True"][-2:] == ["dense", "probabilities"]
    normalized = read(pipeline, p["normalized"])
    confusion = read(pipeline, p["confusion"])
    assert [r["actual"] for r in confusion] == [str(c) for c in normalized.labels[normalized.split == 2]]
    for name in ("ingest", "normalize", "extract-frozen", "train-head", "unfreeze", "finetune"):
        row = read(pipeline, f"{p['flow']}/{name}.json")
        assert row["stage"] == name and {"title", "input", "operation", "output", "example"} <= set(row)
    assert list(pipeline["root"].rglob(".*.tmp*")) == []  # nothing half-written left by the atomic writes


# --- quiet, and fast to refuse ----------------------------------------------------------------------------------

BAD_CONFIG_WITHOUT_TENSORFLOW = """
import runpy, sys
sys.argv = ["train_head", "--features", "f", "--base", "b", "--head", "h", "--model", "m", "--layers", "l",
            "--history", "h.csv", "--metrics", "m.json", "--flow", "f.json"]
try:
    runpy.run_module("stages.train_head", run_name="__main__", alter_sys=True)
except SystemExit as exit:
    assert exit.code == 2, exit.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"tensorflow", "keras", "mlflow", "tf_keras"})
assert not heavy, f"a bad config imported {heavy[:10]} before it was refused"
"""


def test_a_training_stage_refuses_a_bad_config_before_importing_tensorflow(tmp_path: Path):
    write_params(tmp_path, train_head={"epochs": "abc"})
    proc = subprocess.run([sys.executable, "-c", BAD_CONFIG_WITHOUT_TENSORFLOW], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train_head.epochs: Value 'abc'" in proc.stderr


def test_a_tensorflow_stage_prints_its_log_without_tensorflows_cpp_notices(tmp_path: Path):
    from thaw import model

    write_params(tmp_path)
    pixels = np.random.default_rng(0).random((12, 32, 32, 3), dtype=np.float32)
    shards.save(tmp_path / "normalized", "pixels", pixels, np.arange(12) % 2, np.zeros(12, np.int8), ["a", "b"])
    model.save_model(model.build_conv_base(32, [4, 8]), tmp_path / "base.keras")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}  # as a user's shell has it
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "stages.extract_frozen", "--normalized", "normalized", "--base",
                           "base.keras", "--out", "features", "--flow", "flow.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "extracted features (12, 8, 8, 8)" in proc.stderr  # the stage's own log line
    # TF_CPP_MIN_LOG_LEVEL=3 (stage.run's default) is TensorFlow's own switch for these; nothing else hides them.
    for noise in ("E0000", "cpu_feature_guard", "node_def_util"):
        assert noise not in proc.stderr, proc.stderr
    # What TensorFlow 2.21 writes before it reads the switch, on a CPU where oneDNN is on (imports.py): absl's
    # warning and the oneDNN notice. Any other line is the stage's own log.
    before_the_switch = ("absl::InitializeLog() is called", "port.cc:", "oneDNN custom operations are on")
    others = [line for line in proc.stderr.splitlines() if not any(mark in line for mark in before_the_switch)]
    assert others and all(" INFO " in line for line in others), proc.stderr


def test_run_records_when_the_stage_ran_outside_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    def main(argv: list[str] | None) -> None:
        pass

    main.__module__ = "stages.train_head"
    stage.run(main, [])
    record = artifacts.read_json(tmp_path / stage.TIMINGS / "train-head.json")
    assert record["stage"] == "train-head" and record["end"] >= record["start"]
