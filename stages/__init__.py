"""thaw: the six-stage transfer-learning pipeline (one module per DVC stage) and the library it runs on.

Importing this package is cheap on purpose: TensorFlow and MLflow are imported only inside the
functions that use them, so stages that do not train never pay for them.
"""
