"""pretrain-base: produce the convolutional base that `extract-frozen` freezes.

`base=glyphs` (default) pretrains it here on a different task, rendered letters (no download);
`base=random` keeps it randomly initialised (the ablation's control); `base=file` loads a saved `.keras`
model; `base=keras_app` builds a Keras Applications network from a weights file already on disk.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from thaw import artifacts, imports, inputs, stage, store

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(argv, __doc__, "input", "out", "metrics")
    imports.import_tensorflow()  # only once the config is known good
    from thaw import model, training, transfer

    base_params, image_size = params.base, params.data.image_size
    inputs.check_fingerprint(artifacts.read_json(args.input), base_params.path, args.input)
    settings = {"base": dataclasses.asdict(base_params), "runtime": dataclasses.asdict(params.runtime),
                "image_size": image_size, "seed": params.seed}  # fmt: skip
    uri = store.tracking_uri(store.project_root())
    with (
        training.stage_run("pretrain-base", params.runtime, settings, [], uri, params.tracking.experiment) as run,
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
    stage.run(main, warm="tensorflow")
