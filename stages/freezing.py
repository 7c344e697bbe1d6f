"""Freezing and thawing: which layers of the base train, in a live Keras model and in a saved `.keras` file.

The rule (thaw the top N layers with weights, never BatchNorm) is written once, over layer tables, so the
`unfreeze` stage can thaw a saved model without importing TensorFlow: it flips the `trainable` flags in the
archive's `config.json` and copies the weights byte for byte. Keras applies `trainable` from that config when
it loads the model, exactly as if the flags had been set on the live layers and the model saved
(tests/test_tf_stages.py checks the two against each other). Keras itself has no API that edits a saved model
without building it, and building it is what costs the import.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.artifacts import ZIP_TIME, atomic_path

if TYPE_CHECKING:
    import keras

BASE_NAME = "base"  # the base's layer name inside the classifier (model.BASE_NAME re-exports it)
KERAS_CONFIG = "config.json"  # the member of a `.keras` archive that holds the architecture and flags


def is_thawable(layer_type: str) -> bool:
    """Whether unfreezing may make a layer of this type trainable: every layer with weights but BatchNorm.

    BatchNorm stays frozen because in Keras 3 a frozen BatchNorm is what runs in inference mode: the
    `training=False` of `base(inputs, training=False)` is overridden by fit's training=True
    (keras-team/keras#20285), so unfreezing it would let fine-tuning batches rewrite its statistics.
    """
    return layer_type != "BatchNormalization"


def top_thawable(layers: Sequence[tuple[str, str]], n: int) -> list[str]:
    """Names of the top `n` thawable layers among the base's weighted `(name, type)` layers, bottom to top.

    ValueError, listing the candidates, when `n` is out of range.
    """
    candidates = [name for name, layer_type in layers if is_thawable(layer_type)]
    if not 0 <= n <= len(candidates):
        raise ValueError(
            f"unfreeze.layers = {n} but the base has {len(candidates)} layers with weights that can be "
            f"unfrozen (bottom to top: {', '.join(candidates)}; BatchNorm stays frozen); "
            f"choose 0..{len(candidates)}"
        )
    return candidates[len(candidates) - n :] if n else []


# --- live Keras models (keras is already imported by whoever holds one) ---


def weighted_layers(base: keras.Model) -> list[keras.Layer]:
    """The base's layers that hold weights, bottom to top (nested models are walked into)."""
    import keras

    found: list[keras.Layer] = []
    for layer in base.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def thawable_layers(base: keras.Model) -> list[keras.Layer]:
    """The weighted layers that unfreezing may make trainable (see `is_thawable`)."""
    return [layer for layer in weighted_layers(base) if is_thawable(type(layer).__name__)]


def freeze(model: keras.Model) -> None:
    """Make every layer of `model` non-trainable."""
    model.trainable = False


def top_thawable_layers(base: keras.Model, n: int) -> list[keras.Layer]:
    """The top `n` thawable layers of `base`; ValueError, listing them, when `n` is out of range."""
    weighted = weighted_layers(base)
    names = set(top_thawable([(layer.name, type(layer).__name__) for layer in weighted], n))
    return [layer for layer in weighted if layer.name in names]


def unfreeze_top_layers(model: keras.Model, n: int) -> list[str]:
    """Make the top `n` thawable layers of the base trainable (the rest stay frozen); return their names.

    `n = 0` leaves the base frozen: only the head trains. BatchNorm layers always stay frozen.
    """
    base = model.get_layer(BASE_NAME)
    thawed = top_thawable_layers(base, n)
    # Trainable containers (the base and any nested model) are needed for an inner layer to train.
    base.trainable = True
    for layer in weighted_layers(base):
        layer.trainable = any(layer is t for t in thawed)
    return [layer.name for layer in thawed]


def layer_table(model: keras.Model) -> list[dict[str, Any]]:
    """One row per layer with weights (base, then head): its part, name, type, trainable, parameter count."""
    rows = []
    for part in (BASE_NAME, "head"):
        sub = model.get_layer(part)
        for layer in weighted_layers(sub):
            rows.append(
                {
                    "part": part,
                    "layer": layer.name,
                    "type": type(layer).__name__,
                    "trainable": bool(layer.trainable),
                    "params": int(sum(int(w.numpy().size) for w in layer.weights)),
                    "trainable_params": int(sum(int(w.numpy().size) for w in layer.trainable_weights)),
                }
            )
    return rows


# --- saved models and their layer tables (no TensorFlow) ---


def parse_table(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A layer table read back from CSV, with its booleans and counts typed again."""
    typed = []
    for row in rows:
        trainable = str(row["trainable"]).lower() == "true"
        typed.append({**row, "trainable": trainable, "params": int(row["params"]),
                      "trainable_params": int(row["trainable_params"])})  # fmt: skip
    return typed


def thaw_table(table: Sequence[dict[str, Any]], n: int) -> tuple[list[str], list[dict[str, Any]]]:
    """Thaw the top `n` base layers of a frozen-base layer table: their names and the table after thawing.

    A thawed layer trains all its weights (every thawable type keeps all its weights trainable); the other
    base layers train none; the head's rows are unchanged.
    """
    base = [(row["layer"], row["type"]) for row in table if row["part"] == BASE_NAME]
    thawed = top_thawable(base, n)
    after = []
    for row in table:
        if row["part"] == BASE_NAME:
            on = row["layer"] in thawed
            row = {**row, "trainable": on, "trainable_params": row["params"] if on else 0}
        after.append(row)
    return thawed, after


def thaw_saved_model(src: str | Path, dst: str | Path, weighted: Iterable[str], thawed: Iterable[str]) -> None:
    """Write `src` to `dst` (atomically) with the base's `weighted` layers trainable only where `thawed`.

    The flags are set as `unfreeze_top_layers` leaves them: the base and every container in it trainable,
    its layers without weights trainable, its weighted layers trainable only if thawed. Other members
    (weights, metadata) are copied unchanged; timestamps are pinned so equal inputs give equal bytes.
    ValueError when `src` holds no layer named `base`.
    """
    weighted, thawed = set(weighted), set(thawed)

    def flag(layer: dict[str, Any]) -> None:
        config = layer["config"]
        name = config.get("name")
        if "trainable" in config:  # operations in a functional graph (e.g. an `Add` op) have no such flag
            config["trainable"] = name in thawed if name in weighted else True
        for inner in config.get("layers") or []:
            flag(inner)

    with zipfile.ZipFile(src) as archive:
        if KERAS_CONFIG not in archive.namelist():
            raise ValueError(f"{src}: not a .keras model file (no {KERAS_CONFIG} inside)")
        config = json.loads(archive.read(KERAS_CONFIG))
        base = [layer for layer in config["config"]["layers"] if layer["config"].get("name") == BASE_NAME]
        if len(base) != 1:
            raise ValueError(f"{src}: expected one layer named {BASE_NAME!r} (the base) in the model")
        flag(base[0])
        with atomic_path(dst) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
            for info in archive.infolist():
                data = json.dumps(config).encode() if info.filename == KERAS_CONFIG else archive.read(info)
                member = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
                member.compress_type = info.compress_type
                out.writestr(member, data)
