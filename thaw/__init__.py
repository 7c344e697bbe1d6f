"""thaw: the library behind the six-stage transfer-learning pipeline.

Data: `datasources` (load, validate, split, normalize), `glyphs` (the offline source task), `inputs`
(fingerprints of external files). Models: `model` (bases, heads, saving), `freezing` (what trains),
`keras_archive` (saved `.keras` files without TensorFlow). Training: `training` (determinism, fit,
checkpoints, the training-stage skeleton), `transfer` (pretrain the base, train the head, fine-tune).
Records: `artifacts` (atomic files), `dataflow` and `reporting` (the traces and figures), `tracking`
(MLflow runs), `sweeps` and `intervals` (ranking with uncertainty). Config: `config` (params.yaml, typed).
Shells: `stage` (for `stages/`, the DVC entry points) and `commands` (the `thaw` console command).

Importing this package is cheap on purpose: TensorFlow and MLflow are imported only by the modules and
functions that use them, so stages that do not train never pay for them.
"""
