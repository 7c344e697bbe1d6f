"""predict: classify images with a trained model; writes one CSV row per image (its label, its probability,
and every class's probability).

    thaw predict --model models:/thaw@champion --input photos/ --out predictions.csv    # the sweep's champion
    thaw predict --model runs:/<run id>/classifier --input x.npz --out predictions.csv  # a run's model
    thaw predict --model models/finetuned.keras --input photos/ --out predictions.csv   # the pipeline's file

The input is an image folder (files in it, or in class sub-folders: the folder's name is then listed, not
used) or an `.npz` with `x`; the images go through the pipeline's own checks and normalization, at the
model's input size (`--resize crop|pad|squash` to size other sizes, as `data.resize` does). Bad input is
refused as `ingest` refuses it: one line naming the file and the fix, exit status 2, and no CSV written.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from thaw import artifacts, datasources, store
from thaw.config import RESIZE_MODES
from thaw.errors import USER_ERRORS, DataError

log = logging.getLogger("thaw.predict")
CHUNK = 256


class Model:
    """A model that takes uint8 images and gives class probabilities, with its class names and input size."""

    def __init__(self, uri: str) -> None:
        if uri.endswith(".keras") and not uri.startswith(("models:/", "runs:/")):
            self._from_keras(Path(uri))
        else:
            self._from_mlflow(uri)

    def _from_keras(self, path: Path) -> None:
        from thaw import model
        from thaw.model import extract_features as extract

        network = model.load_keras_model(path, compile=False)
        self.image_size = int(network.input_shape[1])
        self.class_names = [str(i) for i in range(int(network.output_shape[-1]))]
        self.probabilities = lambda images: extract(network, datasources.normalize(images))

    def _from_mlflow(self, uri: str) -> None:
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        os.environ.setdefault("MLFLOW_TRACKING_URI", store.Store.from_environ().uri)
        try:
            loaded = mlflow.pyfunc.load_model(uri)
        except (MlflowException, OSError) as exc:
            raise DataError(f"--model {uri}: cannot load it ({str(exc).splitlines()[0]}); give a models:/, runs:/ "
                            "URI known to MLFLOW_TRACKING_URI, or a .keras file") from None  # fmt: skip
        inputs = loaded.metadata.get_input_schema().inputs[0]
        self.image_size = int(inputs.shape[1])
        self.class_names = loaded.metadata.get_output_schema().input_names()
        self.probabilities = lambda images: loaded.predict(images).to_numpy()


def open_input(path: Path, image_size: int, resize: str) -> tuple[datasources.ImageSource, list[str]]:
    """The images to classify, and a name per row (a file's path relative to the input, or the row number)."""
    if path.suffix == ".npz":
        source = datasources.open_npz(str(path))
        return source, [str(i) for i in range(len(source.labels))]
    if not path.is_dir():
        raise DataError(f"{path}: not an image folder or an .npz file (fix --input)")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in datasources.IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{path}: no images ({', '.join(datasources.IMAGE_SUFFIXES)})")

    def read(rows: np.ndarray) -> np.ndarray:
        return np.stack([datasources.read_image(files[int(i)], image_size, resize) for i in rows])

    names = [f.relative_to(path).as_posix() for f in files]
    return datasources.ImageSource(np.zeros(len(files), np.int64), (), read, str(path)), names


def predictions(model: Model, source: datasources.ImageSource, names: list[str]) -> Iterator[dict[str, object]]:
    for start in range(0, len(names), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(names)))
        images = source.read(rows)
        datasources.validate_images(images, model.image_size, source.where)
        for name, p in zip([names[i] for i in rows], model.probabilities(images), strict=True):
            best = int(np.argmax(p))
            yield {"image": name, "label": model.class_names[best], "probability": round(float(p[best]), 6),
                   **{f"p_{c}": round(float(v), 6) for c, v in zip(model.class_names, p, strict=True)}}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="thaw predict", description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/ID, runs:/ID/classifier, or a .keras"
    )
    parser.add_argument("--input", required=True, type=Path, help="an image folder or an .npz with x")
    parser.add_argument("--out", required=True, type=Path, help="the CSV to write")
    parser.add_argument("--resize", nargs="?", const="crop", default="none", choices=RESIZE_MODES,
                        help="bring images of another size to the model's input size as data.resize does: crop "
                             "(given alone), pad or squash; use the mode the model was trained with")  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if not args.input.exists():
            raise DataError(f"{args.input}: not found (fix --input)")
        model = Model(args.model)
        source, names = open_input(args.input, model.image_size, args.resize)
        rows = list(predictions(model, source, names))  # every image checked before the CSV is written
        artifacts.write_csv(args.out, rows)
    except USER_ERRORS as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    log.info("%d predictions written to %s", len(rows), args.out)


if __name__ == "__main__":
    main()
