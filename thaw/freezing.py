"""Freezing and thawing: which layers of the base train, in a live Keras model and in a saved `.keras` file.

The rule (thaw the top N layers with weights, never BatchNorm) is written once, over layer tables, so the
`unfreeze` stage can thaw a saved model without importing TensorFlow: it flips the `trainable` flags in the
archive's `config.json` and copies the weights byte for byte. Keras applies `trainable` from that config when
it loads the model, exactly as if the flags had been set on the live layers and the model saved
(tests/test_freezing.py checks the two against each other). Keras itself has no API that edits a saved model
without building it, and building it is what costs the import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thaw import keras_archive
from thaw.artifacts import atomic_path

if TYPE_CHECKING:
    import keras

BASE_NAME = "base"  # the base's layer name inside the classifier (model.BASE_NAME re-exports it)


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
    return thawed, table_with_flags(table, {name: name in thawed for name, _ in base})


def thaw_saved_model(
    src: str | Path, dst: str | Path, weighted: Iterable[str], thawed: Iterable[str]
) -> dict[str, bool]:
    """Write `src` to `dst` (atomically) with the base's `weighted` layers trainable only where `thawed`;
    return the flags read back from what was written (`layer -> trainable` for every weighted layer).

    The flags are set as `unfreeze_top_layers` leaves them: the base and every container in it trainable,
    its layers without weights trainable, its weighted layers trainable only if thawed. Other members
    (weights, metadata) are copied unchanged, the save date and times pinned. The written archive is read
    back and checked before it replaces `dst`; ArchiveError when `src` is not a Keras 3 model with a
    layer named `base`, or when the archive does not hold exactly the intended flags.
    """
    weighted, thawed = list(weighted), set(thawed)
    members = keras_archive.read_members(src)
    keras_archive.keras_version(members, src)
    config = keras_archive.member_json(members, keras_archive.CONFIG, src)
    for layer in keras_archive.nested_layers(keras_archive.top_layer(config, BASE_NAME, src)):
        inner = layer["config"]
        if "trainable" in inner:  # operations in a functional graph (e.g. an `Add` op) have no such flag
            inner["trainable"] = inner.get("name") in thawed if inner.get("name") in weighted else True
    with atomic_path(dst) as tmp:
        keras_archive.write_pinned(tmp, members, config)
        return read_thawed(tmp, weighted, thawed)


def read_thawed(path: str | Path, weighted: Sequence[str], thawed: set[str]) -> dict[str, bool]:
    """The trainable flag of each weighted base layer in a written archive, checked against `thawed`."""
    members = keras_archive.read_members(path)
    keras_archive.keras_version(members, path)
    flags = keras_archive.trainable_flags(keras_archive.member_json(members, keras_archive.CONFIG, path),
                                          BASE_NAME, path)  # fmt: skip
    if missing := [name for name in weighted if name not in flags]:
        raise keras_archive.ArchiveError(f"{path}: base layer(s) {missing} have no trainable flag in the archive")
    on = {name for name in weighted if flags[name]}
    if on != thawed:
        raise keras_archive.ArchiveError(
            f"{path}: the written model has trainable base layers {sorted(on)}, not the intended {sorted(thawed)}"
        )
    return {name: flags[name] for name in weighted}


def table_with_flags(table: Sequence[dict[str, Any]], flags: Mapping[str, bool]) -> list[dict[str, Any]]:
    """The layer table with each base layer's trainable flag (and trainable parameters) as in `flags`."""
    rows = []
    for row in table:
        if row["part"] == BASE_NAME:
            on = flags[row["layer"]]
            row = {**row, "trainable": on, "trainable_params": row["params"] if on else 0}
        rows.append(row)
    return rows


def table_summary(table: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts of trainable and frozen layers and parameters in a layer table."""
    return {
        "trainable_layers": sum(row["trainable"] for row in table),
        "frozen_layers": sum(not row["trainable"] for row in table),
        "trainable_params": sum(row["trainable_params"] for row in table),
        "total_params": sum(row["params"] for row in table),
    }
