"""Faults fail fast and clean: a tracking store that cannot be reached, a bad value in any section of the
params file, an unfreeze depth the base cannot take. Each is caught before any training, with the key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from thaw import tracking
from thaw.inputs import NO_INPUT
from thaw.config import ConfigError, check_params_file

REPO = Path(__file__).resolve().parents[1]


def params_file(tmp_path: Path, **changes: dict) -> Path:
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    data["inputs"] = {key: data[key]["path"] for key in ("data", "base") if data[key].get("path")}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fingerprint_file(tmp_path: Path, path: str | None = None) -> str:
    """The fingerprint an `input@<name>` stage would have left for `path` (none: the committed default)."""
    out = tmp_path / "inputs" / "fingerprint.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"kind": "file", "path": path} if path else NO_INPUT))
    return str(out)


def test_an_unreachable_tracking_server_fails_fast_with_the_fix():
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"MLFLOW_TRACKING_URI=http://127\.0\.0\.1:9 is unreachable.*unset it"):
        tracking.check_store("http://127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 5


def test_a_sqlite_store_needs_a_writable_folder(tmp_path):
    tracking.check_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ConfigError, match="missing or not writable"):
        tracking.check_store(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}")


def test_train_head_refuses_to_train_when_tracking_is_unreachable(tmp_path, monkeypatch):
    from stages import train_head

    rng = np.random.default_rng(0)
    features = tmp_path / "features.npz"
    np.savez(features, features=rng.random((30, 8, 8, 64), dtype=np.float32), labels=np.arange(30) % 3,
             split=np.repeat(np.arange(3, dtype=np.int8), 10), class_names=np.array(["a", "b", "c"]))  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    outs = {name: str(tmp_path / f"{name}.out") for name in ("head", "model", "layers", "history", "metrics", "flow")}
    argv = ["--params", str(params_file(tmp_path)), "--features", str(features), "--base", str(tmp_path / "b.keras")]
    argv += [arg for name, path in outs.items() for arg in (f"--{name}", path)]
    with pytest.raises(ConfigError, match="unreachable"):
        train_head.main(argv)
    assert not any(Path(p).exists() for p in outs.values())
    assert not (tmp_path / ".thaw").exists()  # not one epoch was trained


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"finetune": {"lr": -0.1}}, r"finetune\.lr = -0\.1 is not allowed"),
        ({"train_head": {"epochs": 0}}, r"train_head\.epochs = 0"),
        ({"unfreeze": {"layers": "two"}}, r"unfreeze\.layers"),
        ({"finetune": {"lrr": 0.1}}, r"finetune\.lrr"),
        ({"extra": {"x": 1}}, r"unknown top-level key\(s\) \['extra'\]"),
    ],
)
def test_every_stage_checks_the_whole_params_file(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        check_params_file(params_file(tmp_path, **changes))


def test_a_stage_that_does_not_read_the_bad_key_still_refuses_to_run(tmp_path):
    bad = params_file(tmp_path, finetune={"lr": 0})
    out = tmp_path / "raw.npz"
    proc = subprocess.run(
        [sys.executable, "-m", "stages.ingest", "--params", str(bad), "--input", fingerprint_file(tmp_path),
         "--out", str(out), "--flow", str(tmp_path / "f.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "finetune.lr = 0" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_an_unfreeze_depth_beyond_the_base_is_rejected_before_pretraining(tmp_path, monkeypatch):
    from stages import pretrain_base

    monkeypatch.chdir(tmp_path)
    params = params_file(tmp_path, unfreeze={"layers": 9})
    out = tmp_path / "base.keras"
    start = time.monotonic()
    with pytest.raises(
        ConfigError,
        match=r"unfreeze\.layers = 9 .* conv1, conv2, conv3, conv4; BatchNorm stays frozen\); choose 0\.\.4",
    ):
        pretrain_base.main(["--params", str(params), "--input", fingerprint_file(tmp_path), "--out", str(out),
                            "--metrics", str(tmp_path / "m.json")])  # fmt: skip
    assert time.monotonic() - start < 10  # pretraining the default base takes longer than this
    assert not out.exists() and not (tmp_path / ".thaw").exists()


def test_transient_tracking_errors_are_retried_and_the_last_one_raised():
    from mlflow.exceptions import MlflowException

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("database is locked")
        return "logged"

    assert tracking.with_retries(flaky, attempts=4, delay=0.01) == "logged"
    assert len(calls) == 3

    def down() -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="connection refused"):
        tracking.with_retries(down, attempts=2, delay=0.01)


def test_a_missing_base_model_file_names_the_key(tmp_path, monkeypatch):
    from stages import pretrain_base

    monkeypatch.chdir(tmp_path)
    params = params_file(tmp_path, base={"kind": "file", "path": str(tmp_path / "nope.keras")})
    with pytest.raises(ConfigError, match=r"base\.path = .*nope\.keras.*no such model file"):
        pretrain_base.main(
            [
                "--params",
                str(params),
                "--input",
                fingerprint_file(tmp_path, str(tmp_path / "nope.keras")),
                "--out",
                str(tmp_path / "b.keras"),
                "--metrics",
                str(tmp_path / "m"),
            ]
        )
