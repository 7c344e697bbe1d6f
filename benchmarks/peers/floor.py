"""The floor of a sweep: one Python process, one TensorFlow import, the stages' own functions; the upstream
(ingest ... train-head) once, then unfreeze + finetune for each point. No DVC, no tracking, no cache: the
least work a sweep can do, which every other way is measured against.

    cd PROJECT && python benchmarks/peers/floor.py --layers 0,2,4 --lr 1e-3,1e-4

Reads the project's params.yaml and changes only the two swept keys per point. Prints one line, FLOOR and JSON: the
upstream's and the points' seconds, and each point's val and test accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import yaml
from inprocess import POINT, UPSTREAM, Pipeline, use_project_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--layers", required=True, help="unfreeze.layers values, comma-separated")
    parser.add_argument("--lr", required=True, help="finetune.lr values, comma-separated")
    args = parser.parse_args()
    root = Path.cwd()
    use_project_code(root)
    pipeline = Pipeline(root)

    start = time.perf_counter()
    params_file = root / "params.yaml"
    pipeline.inputs(params_file)
    pipeline.run(UPSTREAM, params_file)
    upstream = time.perf_counter() - start

    points = []
    for layers, lr in itertools.product(args.layers.split(","), args.lr.split(",")):
        params = yaml.safe_load(params_file.read_text())
        params["unfreeze"]["layers"], params["finetune"]["lr"] = int(layers), float(lr)
        point_file = root / "floor-params.yaml"
        point_file.write_text(yaml.safe_dump(params, sort_keys=False))
        pipeline.run(POINT, point_file)
        metrics = pipeline.metrics("finetune")
        points.append({"layers": int(layers), "lr": float(lr), "val_accuracy": metrics["val_accuracy"],
                       "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"]})  # fmt: skip
    total = time.perf_counter() - start
    print(
        "FLOOR "
        + json.dumps({"upstream_s": upstream, "points_s": total - upstream, "total_s": total, "points": points})
    )


if __name__ == "__main__":
    main()
