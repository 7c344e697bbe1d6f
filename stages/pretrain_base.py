"""pretrain-base: produce the convolutional base that `extract-frozen` freezes.

`base=glyphs` (default) pretrains it here on a different task, rendered letters (no download);
`base=random` keeps it randomly initialised (the ablation's control); `base=file` loads a saved `.keras`
model; `base=keras_app` builds a Keras Applications network from a weights file already on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from thaw import artifacts, config, imports, inputs, stage

log = logging.getLogger(__name__)

# What this stage declares under `params:` in dvc.yaml (tests/test_stages.py holds the two equal): its
# checkpoint is keyed by exactly these values, so a resumed run never continues another configuration's epochs.
PARAMS = ("seed", "data.image_size", "base", "runtime")


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "input", "out", "metrics")
    imports.import_tensorflow()  # only once the config is known good
    from thaw import model, training, transfer

    base_params, image_size = params.base, params.data.image_size
    inputs.check_fingerprint(artifacts.read_json(args.input), base_params.path, args.input)
    settings = config.declared(params, PARAMS)
    with (
        training.stage_run("pretrain-base", params.runtime, settings, []) as run,
        run.strategy.scope(),
    ):
        base, history = transfer.prepare_base(base_params, image_size, params.seed, run.checkpoint,
                                              params.unfreeze.layers, run.steps_per_execution)  # fmt: skip
        metrics: dict[str, Any] = {"kind": base_params.kind, "params": int(base.count_params())}
        if history:
            metrics.update({f"source_{k}": v for k, v in history[-1].items() if k not in ("epoch", "phase")})
        log.info("base %s: output %s, %d parameters", base_params.kind, base.output_shape, base.count_params())
        model.save_model(base, args.out)
        artifacts.write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main)
