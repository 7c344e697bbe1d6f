"""The fine-tuned classifier as an MLflow model: a pyfunc that wraps the `.keras` file, so that
`mlflow.pyfunc.load_model`, `mlflow models predict/serve` and the Model Registry can use it.

Why a pyfunc wrapper and not MLflow's Keras flavor: the flavor saves by calling Keras, so `track` would
import TensorFlow (about 5 s a run); the wrapper copies the file as it is and imports Keras only when the
model is loaded. It takes what a user has, uint8 images N x H x W x 3, applies the pipeline's own
normalization (`thaw.datasources.normalize`) and returns one probability column per class name.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

MODEL_NAME = "classifier"  # the logged model's name in the run (not "model": that is the .keras file's artifact folder)
THAW_PACKAGE = Path(__file__).resolve().parent


class KerasImageClassifier(mlflow.pyfunc.PythonModel):
    """uint8 images in, class probabilities out (a DataFrame, one column per class)."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        self.class_names = json.loads(Path(context.artifacts["class_names"]).read_text(encoding="utf-8"))

    # `np.ndarray` is one of the input hints MLflow takes without deriving a schema (the signature is explicit);
    # with no hint it prints advice to add one whenever the class is defined, in every `track` and every load.
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        from thaw.datasources import normalize
        from thaw.shards import prediction_batch

        if isinstance(model_input, dict):  # a named tensor input arrives as {"images": array}
            (model_input,) = model_input.values()
        images = np.asarray(model_input)
        pixels = normalize(images) if images.dtype == np.uint8 else images.astype(np.float32)
        probabilities = self.model.predict(pixels, batch_size=prediction_batch(pixels.shape[1:]), verbose=0)
        return pd.DataFrame(probabilities, columns=self.class_names)


SERVING_IMPORTS = ("tensorflow", "keras", "mlflow", "numpy", "pandas", "PIL")  # what loading the model imports


def requirements() -> list[str]:
    """What loading the model needs, pinned to the distributions this environment installed them from: one
    module comes from different ones (`tensorflow` from tensorflow, tensorflow-cpu or tensorflow-macos), so the
    names are looked up, not assumed. Not inferred by MLflow, which would load the model to find them."""
    from importlib.metadata import packages_distributions, version

    from packaging.utils import canonicalize_name

    provided = packages_distributions()
    pins = []
    for module in SERVING_IMPORTS:
        if not provided.get(module):
            raise RuntimeError(f"no installed distribution provides `{module}`, which the logged model needs to load: "
                               "install the project (pip install -e .)")  # fmt: skip
        pins += [f"{canonicalize_name(name)}=={version(name)}" for name in sorted(set(provided[module]))]
    return pins


def save(keras_model: Path, class_names: list[str], image_shape: list[int], out: Path) -> Path:
    """Write the MLflow model folder for `keras_model` (with a signature and an input example) to `out`."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape), "images")]),
        outputs=Schema([ColSpec("float", name) for name in class_names]),
    )
    quiet = logging.getLogger("mlflow.pyfunc")
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="thaw-model-") as tmp, warnings.catch_warnings():
        # MLflow's advice on type hints, pickling and example validation is for hand-written models; this one's
        # signature is explicit and its class is thaw's own code, shipped with the model (code_paths).
        warnings.simplefilter("ignore", UserWarning)
        quiet.setLevel(logging.ERROR)
        names = Path(tmp) / "class_names.json"
        names.write_text(json.dumps(class_names), encoding="utf-8")
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=KerasImageClassifier(),
            artifacts={"keras_model": str(keras_model), "class_names": str(names)},
            signature=signature,
            input_example=np.zeros((1, *image_shape), dtype=np.uint8),
            pip_requirements=requirements(),
            code_paths=[str(THAW_PACKAGE)],  # the wrapper's own code travels with the model
        )
    quiet.setLevel(level)
    return out


def log(client: Any, run_id: str, experiment_id: str, model_dir: Path, tags: dict[str, str]) -> str:
    """Log a saved model folder as the run's MLflow model (a LoggedModel, shown in the run's Models column);
    return its `models:/<id>` URI."""
    from mlflow.entities import LoggedModelOutput

    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id, tags=tags)
    try:
        client.log_model_artifacts(logged.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return f"models:/{logged.model_id}"


def register(client: Any, name: str, model_uri: str, run_id: str, alias: str | None, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of registered model `name` (created when missing), tagged with
    its lineage, and point `alias` at it; return the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="thaw: fine-tuned image classifiers")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    model_id = model_uri.removeprefix("models:/")
    version = client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)
