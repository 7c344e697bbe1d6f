"""report: write reports/trace.md (the seed's data-flow, training and layer traces from this run) and the
learning-curve and confusion-matrix PNGs. Reads only recorded outputs; no TensorFlow, no MLflow."""

from __future__ import annotations

from collections.abc import Sequence

from thaw import artifacts, dataflow, reporting, stage


def main(argv: Sequence[str] | None = None) -> None:
    args, params = stage.parse(
        argv, __doc__, "flow", "head_history", "finetune_history", "layers", "confusion", "head_metrics",
        "finetune_metrics", "out", "curves", "confusion_png",
    )  # fmt: skip
    history = artifacts.read_csv(args.head_history) + artifacts.read_csv(args.finetune_history)
    flow = dataflow.read_flow(args.flow)
    text = reporting.render_report(
        flow=flow,
        history=history,
        layers=artifacts.read_csv(args.layers),
        head_metrics=artifacts.read_json(args.head_metrics),
        finetune_metrics=artifacts.read_json(args.finetune_metrics),
        unfrozen_layers=params.unfreeze.layers,
        finetune_lr=params.finetune.lr,
    )
    reporting.plot_curves(history, args.curves)
    class_names = next(row for row in flow if row["stage"] == "ingest")["class_names"]
    reporting.plot_confusion(artifacts.read_csv(args.confusion), class_names, args.confusion_png)
    artifacts.write_text(args.out, text)


if __name__ == "__main__":
    stage.run(main)
