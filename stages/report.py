"""report: write reports/trace.md (the seed's data-flow, training and layer traces from this run) and the
learning-curve and confusion-matrix PNGs. Reads only recorded outputs; no TensorFlow, no MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stages import artifacts, cli, reporting
from stages.params import load_section


def read_flow(folder: str | Path) -> list[dict[str, object]]:
    """The stages' data-flow rows, in pipeline order."""
    rows = []
    for stage in reporting.STAGE_ORDER:
        path = Path(folder) / f"{stage}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing data-flow record of stage '{stage}' (run `dvc repro {stage}`)")
        rows.append(artifacts.read_json(path))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = cli.parse(
        argv, __doc__, "flow", "head_history", "finetune_history", "layers", "confusion", "head_metrics",
        "finetune_metrics", "out", "curves", "confusion_png",
    )  # fmt: skip
    history = artifacts.read_csv(args.head_history) + artifacts.read_csv(args.finetune_history)
    confusion = artifacts.read_csv(args.confusion)
    flow = read_flow(args.flow)
    text = reporting.render_report(
        flow=flow,
        history=history,
        layers=artifacts.read_csv(args.layers),
        head_metrics=artifacts.read_json(args.head_metrics),
        finetune_metrics=artifacts.read_json(args.finetune_metrics),
        unfrozen_layers=load_section(args.params, "unfreeze").layers,
        finetune_lr=load_section(args.params, "finetune").lr,
    )
    reporting.plot_curves(history, args.curves)
    reporting.plot_confusion(
        confusion, next(row for row in flow if row["stage"] == "ingest")["class_names"], args.confusion_png
    )
    artifacts.write_text(args.out, text)


if __name__ == "__main__":
    cli.run(main)
