"""Does pretraining matter? The same head on the frozen pretrained base vs on a randomly initialised base of
the same architecture, and what fine-tuning adds, on the default data, for several seeds.

Runs the pipeline's own functions in-process with the values of params.yaml (only `base.kind` and the seed
vary) and prints a Markdown table of test accuracies.

    python benchmarks/ablation.py [--params params.yaml] [--seeds 42 43 44]
    python benchmarks/ablation.py --smoke      # tiny data and epochs, one seed: seconds, for CI
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from stages import model, training
from stages.finetune import finetune
from stages.freezing import freeze, unfreeze_top_layers
from stages.ingest import ingest
from stages.normalize import normalize
from stages.params import load_section
from stages.pretrain_base import prepare_base
from stages.train_head import train_head

# --smoke: the end-to-end tests' tiny sizes, so CI runs every line of the script in seconds.
SMOKE = {"rows": 60, "pretrain": {"classes": 4, "per_class": 8, "epochs": 1}, "epochs": 1}


def run_variant(params_file: str, kind: str, seed: int, smoke: bool = False) -> dict[str, float]:
    """Head test accuracy, and test accuracy after fine-tuning, for one base kind and seed."""
    data = load_section(params_file, "data")
    base_params = dataclasses.replace(load_section(params_file, "base"), kind=kind)
    head_params = load_section(params_file, "train_head")
    ft_params = load_section(params_file, "finetune")
    layers = load_section(params_file, "unfreeze").layers
    if smoke:
        data = dataclasses.replace(data, rows=SMOKE["rows"])
        pretrain = dataclasses.replace(base_params.pretrain, **SMOKE["pretrain"])
        base_params = dataclasses.replace(base_params, pretrain=pretrain)
        head_params = dataclasses.replace(head_params, epochs=SMOKE["epochs"])
        ft_params = dataclasses.replace(ft_params, epochs=SMOKE["epochs"])

    raw = ingest(data.source, data.path, data.rows, data.image_size, data.resize,
                 data.val_fraction, data.test_fraction, seed)  # fmt: skip
    pixels, labels, split = normalize(raw["images"]), raw["labels"], raw["split"]
    test = split == 2
    base, _ = prepare_base(base_params, data.image_size, seed)
    freeze(base)
    features = model.extract_features(base, pixels)
    head, history = train_head(features, labels, split, len(raw["class_names"]), head_params, seed)
    head_test, _ = training.evaluate(head, features[test], labels[test])
    classifier = model.assemble(base, head)
    unfreeze_top_layers(classifier, layers)
    finetune(classifier, pixels, labels, split, ft_params, len(history) + 1, seed)
    tuned_test, _ = training.evaluate(classifier, pixels[test], labels[test])
    return {"head": head_test["accuracy"], "finetuned": tuned_test["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--smoke", action="store_true", help="tiny data and epochs, the first seed only (for CI)")
    args = parser.parse_args()
    if args.smoke:
        args.seeds = args.seeds[:1]

    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        pretrained = run_variant(args.params, "glyphs", seed, args.smoke)
        random_init = run_variant(args.params, "random", seed, args.smoke)
        rows.append((seed, pretrained, random_init))

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    print("| seed | head, pretrained base | head, random base | gap (points) | fine-tuned, pretrained base | "
          "fine-tuned, random base |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for seed, p, r in rows:
        print(f"| {seed} | {pct(p['head'])} | {pct(r['head'])} | {pct(p['head'] - r['head'])} | "
              f"{pct(p['finetuned'])} | {pct(r['finetuned'])} |")  # fmt: skip
    gaps = [p["head"] - r["head"] for _, p, r in rows]
    gains = [p["finetuned"] - p["head"] for _, p, _ in rows]
    print(
        f"\npretraining: head accuracy {100 * statistics.mean(gaps):+.1f} points on average "
        f"(smallest {100 * min(gaps):+.1f}); fine-tuning on the pretrained base: "
        f"{100 * statistics.mean(gains):+.1f} points on average (smallest {100 * min(gains):+.1f}); "
        f"{len(rows)} seeds in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
