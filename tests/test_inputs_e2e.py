"""End to end: external inputs are tracked by content. In a real git + DVC repo with tiny params, replacing
the data file at `data.path` (or the model at `base.path`) in place makes `dvc status` report it and
`dvc repro` rerun from the first stage that reads it, MLflow gets a second run keyed on the new content, and
an unchanged input reruns nothing. A folder of images is tracked the same way."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tiny_project import make_tiny_project, run, stages_run

pytestmark = pytest.mark.slow

AFTER_INGEST = ["ingest", "normalize", "extract-frozen", "train-head", "unfreeze", "finetune", "report", "track"]
AFTER_BASE = ["pretrain-base", "extract-frozen", "train-head", "unfreeze", "finetune", "report", "track"]


def digits_npz(path: Path, rows: int, seed: int) -> None:
    """An npz of `rows` digits upscaled to 32x32x3 (as data=npz reads them), drawn with `seed`."""
    from thaw.datasources import load_digits

    digits = load_digits(32)
    pick = np.random.default_rng(seed).choice(len(digits.labels), rows, replace=False)
    np.savez(path, x=digits.images[pick], y=digits.labels[pick])


def compose(root: Path, env: dict[str, str], *overrides: str) -> None:
    run([sys.executable, "-m", "thaw.commands.compose", *overrides], root, env)


def runs_by_input(root: Path, name: str) -> dict[str, str]:
    """run id -> the `thaw.input.<name>` tag of every finished run in the project's store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("thaw")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    return {r.info.run_id: r.data.tags.get(f"thaw.input.{name}") for r in runs}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("inputs")
    env = make_tiny_project(root)
    external = tmp_path_factory.mktemp("external")
    return root, env, external


def test_a_data_file_replaced_in_place_reruns_from_ingest(project) -> None:
    root, env, external = project
    data = external / "digits.npz"
    digits_npz(data, 80, seed=1)
    compose(root, env, "data=npz", f"data.path={data}", "data.rows=60")
    first = run(["dvc", "repro"], root, env)
    assert ["input@data", *AFTER_INGEST] == [s for s in stages_run(first) if s != "pretrain-base"]
    fingerprint = json.loads((root / "data/inputs/data.json").read_text())
    assert fingerprint["path"] == str(data) and fingerprint["kind"] == "file"

    assert stages_run(run(["dvc", "repro"], root, env)) == []  # unchanged input: nothing reruns
    data.write_bytes(data.read_bytes())  # rewritten with the same bytes: still nothing
    assert stages_run(run(["dvc", "repro"], root, env)) == []

    digits_npz(data, 100, seed=2)  # replaced in place by other data
    status = run(["dvc", "status"], root, env)
    assert "input@data" in status and str(data) in status and "modified" in status
    second = run(["dvc", "repro"], root, env)
    assert stages_run(second) == ["input@data", *AFTER_INGEST]  # not pretrain-base: it does not read the data

    tags = runs_by_input(root, "data")
    assert len(tags) == 2 and len(set(tags.values())) == 2  # two runs, keyed on two data hashes
    assert json.loads((root / "data/inputs/data.json").read_text())["md5"] in tags.values()


def test_a_base_file_replaced_in_place_reruns_from_pretrain_base(project) -> None:
    root, env, external = project
    base = external / "base.keras"
    shutil.copy(root / "models/base.keras", base)
    compose(root, env, f"data.path={external / 'digits.npz'}", "data=npz", "data.rows=60", "base=file",
            f"base.path={base}")  # fmt: skip
    first = stages_run(run(["dvc", "repro"], root, env))
    # The same model as before, now read from a file: what it feeds may be byte-identical and not rerun.
    assert first[:2] == ["input@base", "pretrain-base"] and "ingest" not in first and "track" in first
    assert stages_run(run(["dvc", "repro"], root, env)) == []

    from thaw import model

    net = model.load_keras_model(base)
    net.set_weights([w * 0.5 for w in net.get_weights()])
    model.save_model(net, base)  # another base, same path
    assert "input@base" in run(["dvc", "status"], root, env)
    assert stages_run(run(["dvc", "repro"], root, env)) == ["input@base", *AFTER_BASE]
    hashes = {tag for tag in runs_by_input(root, "base").values() if tag != "none"}
    assert len(hashes) == 2


def test_a_folder_input_is_tracked_by_content(project) -> None:
    root, env, external = project
    from PIL import Image

    folder = external / "images"
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (8, 8), (i * 20, 0 if cls == "a" else 200, 0)).save(folder / cls / f"{i}.png")
    compose(root, env, "data=folder", f"data.path={folder}", "data.image_size=32")
    assert stages_run(run(["dvc", "repro", "ingest"], root, env)) == ["input@data", "ingest"]
    assert stages_run(run(["dvc", "repro", "ingest"], root, env)) == []
    Image.new("RGB", (8, 8), (255, 255, 255)).save(folder / "b" / "3.png")  # one image edited
    assert "input@data" in run(["dvc", "status", "--with-deps", "ingest"], root, env)
    assert stages_run(run(["dvc", "repro", "ingest"], root, env)) == ["input@data", "ingest"]
