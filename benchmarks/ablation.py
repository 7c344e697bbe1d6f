"""Does the pretrained base help, and against what? Every arm of a fair ablation on the default data, over
several seeds, at the default size and with few labels, each arm tuned on the validation split alone.

    python benchmarks/ablation.py                         # 5 seeds, labels per class: all, 20, 5
    python benchmarks/ablation.py --seeds 42 43 --labels all 10
    python benchmarks/ablation.py --smoke                 # tiny data and epochs, one seed (for CI)

Arms (the pipeline's own `thaw` functions, in one process, with the values of params.yaml):
  pretrained      the pipeline: the glyph-pretrained base frozen, its head, then fine-tuned (unfreeze.layers)
  random+BN       the same architecture randomly initialised, BatchNorm statistics recalibrated on the
                  target's training images, the same head, then fine-tuned the same way
  shuffled-source the base pretrained on the same letters with shuffled labels, then as `pretrained`
  scratch         base + head trained end to end from random initialisation, train_head.epochs +
                  finetune.epochs epochs
  probe: ...      logistic regression on standardized raw pixels, pretrained features, random+BN features

Fairness: each trained phase picks its learning rate from the same 3-point grid around the pipeline's
value and its epoch count (up to the pipeline's) by validation accuracy; each probe picks C from the same
grid by validation accuracy. The test split is never used to choose. With few labels, only the training
split shrinks (k rows per class); validation and test stay as ingest split them. Prints Markdown tables:
mean test accuracy with a 95 % t-interval over seeds, and the mean train accuracy of the chosen point.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from thaw import config, model, training
from thaw.datasources import TEST, TRAIN, VAL, ingest, limit_training_labels, normalize
from thaw.freezing import freeze, unfreeze_top_layers
from thaw.transfer import pretrain_on_glyphs

LR_FACTORS = (1 / 3, 1.0, 3.0)  # the grid: the pipeline's rate, a third of it and three times it
PROBE_C = (0.01, 0.1, 1.0, 10.0)
ARMS = ("pretrained", "random+BN", "shuffled-source", "scratch")
SMOKE = {"rows": 60, "pretrain": {"classes": 4, "per_class": 8, "epochs": 1}, "epochs": 2}


@dataclasses.dataclass(frozen=True)
class Result:
    val: float
    test: float
    train: float
    choice: str


def accuracy(net: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(net.predict(x, batch_size=256, verbose=0).argmax(axis=1) == y))


def fit_select(
    build: Callable[[], keras.Model], lr: float, epochs: int, batch_size: int, data: dict[str, Any], seed: int
) -> tuple[Result, list[np.ndarray]]:
    """Train a fresh `build()` at `lr` for up to `epochs`; keep the epoch with the best validation accuracy
    (the earliest on ties) and return its result (test and train accuracy measured there) and weights."""
    training.make_deterministic(seed)
    net = build()
    model.compile_classifier(net, lr, steps_per_execution=32)
    x, y = data["x"][TRAIN], data["y"][TRAIN]
    best_val, best_epoch, weights = -1.0, 0, net.get_weights()
    for epoch in range(epochs):
        training.reseed_layers(net, seed, epoch)
        order = training.epoch_order(len(x), seed, epoch)
        net.fit(training.dataset(x[order], y[order], batch_size), epochs=1, shuffle=False, verbose=0)
        val = accuracy(net, data["x"][VAL], data["y"][VAL])
        if val > best_val:
            best_val, best_epoch, weights = val, epoch + 1, [w.copy() for w in net.get_weights()]
    net.set_weights(weights)
    result = Result(best_val, accuracy(net, data["x"][TEST], data["y"][TEST]), accuracy(net, x, y),
                    f"lr={lr:.0e} epochs={best_epoch}")  # fmt: skip
    return result, weights


def tuned(runs: list[tuple[Result, list[np.ndarray]]]) -> tuple[Result, list[np.ndarray]]:
    """The grid point with the best validation accuracy (the first on ties)."""
    return max(runs, key=lambda run: run[0].val)


def head_then_finetune(base: keras.Model, data: dict[str, Any], cfg: dict[str, Any], seed: int) -> dict[str, Result]:
    """The pipeline's recipe on `base`: a head on its frozen features, then the top layers fine-tuned; the
    learning rate and epochs of each phase chosen on the validation split."""
    freeze(base)
    features = {split: model.extract_features(base, data["x"][split]) for split in (TRAIN, VAL, TEST)}
    feats = {"x": features, "y": data["y"]}
    head_p = cfg["train_head"]

    def head() -> keras.Model:
        return model.build_head(features[TRAIN].shape[1:], cfg["classes"], head_p.units, head_p.dropout, head_p.pool)

    head_result, head_weights = tuned(
        [fit_select(head, head_p.lr * f, head_p.epochs, head_p.batch_size, feats, seed) for f in cfg["factors"]]
    )
    ft = cfg["finetune"]
    base_weights = base.get_weights()

    def unfrozen() -> keras.Model:  # every grid point starts from the same base and trained head
        base.set_weights(base_weights)
        trained_head = head()
        trained_head.set_weights(head_weights)
        classifier = model.assemble(base, trained_head)
        unfreeze_top_layers(classifier, cfg["layers"])
        return classifier

    ft_result, _ = tuned(
        [fit_select(unfrozen, ft.lr * f, ft.epochs, ft.batch_size, data, seed) for f in cfg["factors"]]
    )
    return {"head": head_result, "fine-tuned": ft_result}


def probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
          test: tuple[np.ndarray, np.ndarray]) -> Result:  # fmt: skip
    """Logistic regression on standardized, flattened inputs, C chosen on the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def flat(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1)

    best = None
    for c in PROBE_C:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        clf.fit(flat(train[0]), train[1])
        score = float(clf.score(flat(val[0]), val[1]))
        if best is None or score > best.val:
            best = Result(score, float(clf.score(flat(test[0]), test[1])), float(clf.score(flat(train[0]), train[1])),
                          f"C={c:g}")  # fmt: skip
    assert best is not None
    return best


def run_seed(params: config.Params, seed: int, regimes: list[int | None], smoke: bool) -> dict[tuple[str, str], Result]:
    """Every arm for one seed and every label regime: (regime, arm) -> result."""
    data_p, base_p = params.data, params.base
    cfg = {"train_head": params.train_head, "finetune": params.finetune, "layers": params.unfreeze.layers,
           "factors": LR_FACTORS}  # fmt: skip
    if smoke:  # every arm and code path, one grid point each
        cfg["factors"] = (1.0,)
        data_p = dataclasses.replace(data_p, rows=SMOKE["rows"])
        base_p = dataclasses.replace(base_p, pretrain=dataclasses.replace(base_p.pretrain, **SMOKE["pretrain"]))
        cfg["train_head"] = dataclasses.replace(cfg["train_head"], epochs=SMOKE["epochs"])
        cfg["finetune"] = dataclasses.replace(cfg["finetune"], epochs=SMOKE["epochs"])
    # Every training label first; each regime then keeps `per_class` of them, as ingest does.
    raw = ingest(dataclasses.replace(data_p, train_per_class=None), seed)
    pixels, labels = normalize(raw.images()), raw.labels
    cfg["classes"] = len(raw.class_names)
    size = data_p.image_size

    def base(kind: str, train_images: np.ndarray | None) -> keras.Model:
        training.make_deterministic(seed)
        net = model.build_conv_base(size, base_p.filters)
        if kind == "pretrained":
            pretrain_on_glyphs(net, base_p.pretrain, size, seed, steps_per_execution=32)
        elif kind == "shuffled-source":
            pretrain_on_glyphs(net, base_p.pretrain, size, seed, steps_per_execution=32, shuffled_labels=True)
        else:  # random+BN: no labels used, only the statistics of the target's training images
            model.recalibrate_batchnorm(net, train_images)
        return net

    head_p, ft = cfg["train_head"], cfg["finetune"]

    def scratch() -> keras.Model:
        return model.assemble(model.build_conv_base(size, base_p.filters),
                              model.build_head((size // 4, size // 4, base_p.filters[-1]), cfg["classes"],
                                               head_p.units, head_p.dropout, head_p.pool))  # fmt: skip

    # Pretraining does not see the target, so each pretrained base is trained once per seed.
    pretrained = {kind: base(kind, train_images=None) for kind in ("pretrained", "shuffled-source")}
    results: dict[tuple[str, str], Result] = {}
    for per_class in regimes:
        regime = "all" if per_class is None else str(per_class)
        split = limit_training_labels(labels, raw.split, per_class, seed)
        data = {"x": {s: pixels[split == s] for s in (TRAIN, VAL, TEST)},
                "y": {s: labels[split == s] for s in (TRAIN, VAL, TEST)}}  # fmt: skip
        for kind in ("pretrained", "shuffled-source", "random+BN"):
            net = model.build_conv_base(size, base_p.filters)
            if kind in pretrained:
                net.set_weights(pretrained[kind].get_weights())
            else:
                net = base(kind, data["x"][TRAIN])
            if kind != "shuffled-source":  # the probe reads the frozen features, before any fine-tuning
                frozen = {s: model.extract_features(net, data["x"][s]) for s in (TRAIN, VAL, TEST)}
                results[(regime, f"probe: {kind} features")] = probe(
                    *((frozen[s], data["y"][s]) for s in (TRAIN, VAL, TEST)))  # fmt: skip
            for phase, result in head_then_finetune(net, data, cfg, seed).items():
                results[(regime, f"{kind}: {phase}")] = result
        results[(regime, "probe: raw pixels")] = probe(*((data["x"][s], data["y"][s]) for s in (TRAIN, VAL, TEST)))
        results[(regime, "scratch")], _ = tuned([
            fit_select(scratch, head_p.lr * f, head_p.epochs + ft.epochs, head_p.batch_size, data, seed)
            for f in cfg["factors"]])  # fmt: skip
    return results


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: params.yaml's seed and the next four")
    parser.add_argument("--labels", nargs="+", help="training labels per class, or `all` (default: 5, 20, all "
                        "and data.train_per_class)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny data and epochs, one seed (for CI)")
    args = parser.parse_args()
    params = config.load(args.params)  # read and validated once; the smoke mode shrinks copies of its sections
    seeds = args.seeds or [params.seed + i for i in range(5)]
    default = params.data.train_per_class
    labels = args.labels or sorted(
        {"5", "20", "all", str(default or "all")}, key=lambda v: (v == "all", int(v) if v != "all" else 0)
    )
    regimes = [None if v == "all" else int(v) for v in labels]
    if args.smoke:
        seeds, regimes = seeds[:1], [2]

    start = time.perf_counter()
    per_seed = [run_seed(params, seed, regimes, args.smoke) for seed in seeds]
    names = list(dict.fromkeys(arm for _, arm in per_seed[0]))
    print(f"Test accuracy (%), mean and 95 % interval over seeds {seeds}; train accuracy of the chosen point.")
    for per_class in regimes:
        regime = "all" if per_class is None else str(per_class)
        print(f"\nTraining labels per class: {regime}\n")
        print("| arm | test accuracy (%) | train accuracy (%) | chosen on val (first seed) |")
        print("|---|---|---|---|")
        for name in names:
            runs = [seed_results[(regime, name)] for seed_results in per_seed]
            mean, half = interval([100 * r.test for r in runs])
            train = statistics.fmean(100 * r.train for r in runs)
            print(f"| {name} | {mean:.1f} ± {half:.1f} | {train:.1f} | {runs[0].choice} |")
    print(f"\n{len(seeds)} seeds x {len(regimes)} regimes in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
