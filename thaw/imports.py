"""How the stages import their heavy libraries: TensorFlow and Keras only once the config is known good, with
TensorFlow's C++ start-up notices silenced by its documented switch."""

from __future__ import annotations

# TensorFlow's C++ start-up notices (oneDNN, absl, a harmless tf.data attribute mismatch logged as an error
# by this TensorFlow build) would bury the per-epoch lines, and MLflow's download bars the tracking line.
# TF_CPP_MIN_LOG_LEVEL=3 is TensorFlow's documented switch for its C++ log; Python errors, a native crash's
# own report and the stage's log still show. It must be set before TensorFlow is imported (stage.run sets it),
# and the stages import TensorFlow only inside `main`, after `parse` has checked the config. A value set
# outside wins (TF_CPP_MIN_LOG_LEVEL=0 to see every notice). TensorFlow 2.21 still writes two lines at import
# (absl's "before InitializeLog" warning and the oneDNN notice) before it reads the switch; the one switch that
# removes the second, TF_ENABLE_ONEDNN_OPTS=0, runs other kernels (other numerics), so those two lines stay.
QUIET_TENSORFLOW = {"TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def import_tensorflow() -> None:
    """Import TensorFlow and Keras (Keras' backend), for a training stage once its config has been checked."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401
