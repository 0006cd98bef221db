"""Where DECS's clustering stage empties clusters: cluster sizes epoch by epoch.

Each run takes the autoencoder the ``default`` preset pretrains for ``--dataset`` and ``--seed``
(reused from ``--models-dir`` when ``python cli.py decs`` saved it there, else pretrained and
saved there), initialises the centroids with k-means, and runs the clustering stage of
``python cli.py decs --on-collapse warn`` (the paper's loss, Adam 1e-3, batch 256) with one change:

- ``none``: no change;
- ``frozen-centroids``: only the encoder is trained;
- ``frozen-encoder``: only the centroids are trained (the encoder's batch normalisation then
  runs on its running statistics);
- ``warmup``: the clustering rate rises linearly from 0 to 1e-3 over ``--warmup`` steps;
- ``authors-threshold``: Otsu's threshold from the batch's q in inference mode (the encoder's
  batch normalisation on its running statistics), as the DECS authors' code takes it; the loss
  still differentiates the training-mode q;
- ``unshuffled``: the batches in index order, the last one short, as in the authors' code;
- ``size-prior``: the cluster-size prior (``--size-prior``) at weight 1 from the first step, the
  weight the collapse fallback switches on (not the paper's loss).

After epochs 1, 5, 20, 80 and the last it labels all images (no augmentation) and records the
cluster sizes, sorted, ACC/NMI/ARI, and the true classes of the images in the cluster that
k-means made smallest. One JSON line per run is appended to ``--results``; a run already there
(same dataset, seed, schedule, variant) is skipped.

    python bench/decs_collapse.py --dataset digits --seed 0 --variants none frozen-centroids frozen-encoder warmup
    python bench/decs_collapse.py --table --results docs/data/decs_collapse.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
import torch
from results import append_result, recorded, series

from deepstab import datasets
from deepstab.methods.decs import DECS
from deepstab.metrics import evaluate
from deepstab.nn.optimizers import Adam
from deepstab.runs.common import pretrained_autoencoder
from deepstab.runs.decs import DECSRun

VARIANTS = ("none", "frozen-centroids", "frozen-encoder", "warmup", "authors-threshold", "unshuffled", "size-prior")
REPORTED_EPOCHS = (1, 5, 20, 80)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-schedule", default="constant", choices=("constant", "cosine"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--warmup", type=int, default=160, help="warm-up steps of the 'warmup' variant")
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--models-dir", default="models")
    p.add_argument("--results", default="decs_collapse.jsonl")
    p.add_argument("--table", action="store_true")
    return p.parse_args()


class InferenceThresholdDECS(DECS):
    """DECS whose Otsu threshold comes from the inference-mode q of the augmented batch."""

    def threshold(self, x, q):
        with torch.no_grad():
            return super().threshold(x, self.clustering(self.autoencoder.embed_inputs(x, training=False)))


class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """``rate · min(1, (step + 1) / steps)``."""

    def __init__(self, rate: float, steps: int):
        self.rate, self.steps = rate, steps

    def __call__(self, step):
        return self.rate * keras.ops.minimum(1.0, (keras.ops.cast(step, "float32") + 1.0) / self.steps)


class Sizes(keras.callbacks.Callback):
    """The sorted cluster sizes and the scores of the model's labels after the reported epochs and
    the last, and the true classes of the images in the cluster that k-means made smallest."""

    def __init__(self, x: np.ndarray, y: np.ndarray, tracked: int):
        super().__init__()
        self.x, self.y, self.tracked, self.epochs = x, y, tracked, []

    def on_epoch_end(self, epoch, logs=None):
        labels = self.model.predict_labels(self.x)
        sizes = sorted(np.bincount(labels, minlength=self.model.n_clusters).tolist())
        if epoch + 1 in REPORTED_EPOCHS or epoch + 1 == self.params["epochs"]:
            scores = {name: round(value, 4) for name, value in evaluate(self.y, labels).items()}
            record = {"epoch": epoch + 1, "sizes": sizes, **scores}
            self.epochs.append(record | {"tracked_classes": classes(self.y[labels == self.tracked])})


def classes(y: np.ndarray) -> dict[str, int]:
    """How many of the labels ``y`` each class has, largest first (JSON keys)."""
    values, counts = np.unique(y, return_counts=True)
    return {str(v): int(c) for c, v in sorted(zip(counts, values), reverse=True)}


def described(counts: dict[str, int] | None) -> str:
    """``counts`` of :func:`classes` as "54 1s, 21 9s" (its two largest classes)."""
    if counts is None:
        return ""
    if not counts:
        return "none"
    return ", ".join(f"{n} {label}s" for label, n in list(counts.items())[:2])


def run(a, variant: str, x: np.ndarray, y: np.ndarray, weights: list) -> dict:
    settings = DECSRun(dataset=a.dataset, seed=a.seed, pretrain_schedule=a.pretrain_schedule)
    keras.utils.set_random_seed(a.seed)
    prior = 1.0 if variant == "size-prior" else 0.0
    kind = InferenceThresholdDECS if variant == "authors-threshold" else DECS
    model = kind(len(np.unique(y)), x.shape[1:], size_prior=prior, on_collapse="warn", seed=a.seed)
    model.autoencoder.set_weights(weights)
    init = model.initialize_centroids(x)
    init_sizes = np.bincount(init, minlength=model.n_clusters)
    smallest = int(np.argmin(init_sizes))
    if variant == "frozen-centroids":
        model.clustering.trainable = False
    if variant == "frozen-encoder":
        model.encoder.trainable = False
    model.compile(optimizer=Adam(WarmUp(settings.lr, a.warmup) if variant == "warmup" else settings.lr))
    sizes = Sizes(x, y, smallest)
    start = time.perf_counter()
    shuffle = variant != "unshuffled"
    model.fit(x, batch_size=settings.batch_size, epochs=a.epochs, callbacks=[sizes], shuffle=shuffle, verbose=0)
    return {
        "dataset": a.dataset,
        "seed": a.seed,
        "pretrain_schedule": a.pretrain_schedule,
        "variant": variant,
        "warmup": a.warmup if variant == "warmup" else 0,
        "init": {
            "sizes": sorted(init_sizes.tolist()),
            "tracked_classes": classes(y[init == smallest]),
            **evaluate(y, init),
        },
        "epochs": sizes.epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }


def autoencoder_weights(a, x: np.ndarray, y: np.ndarray) -> list:
    """The weights of the ``default`` preset's autoencoder for ``a.dataset`` and ``a.seed``."""
    settings = DECSRun(dataset=a.dataset, seed=a.seed, pretrain_schedule=a.pretrain_schedule, models_dir=a.models_dir)
    settings.resolve()
    keras.utils.set_random_seed(a.seed)
    model = DECS(len(np.unique(y)), x.shape[1:], seed=a.seed)
    path = settings.autoencoder_path(x, model)
    pretrained_autoencoder(
        settings,
        model,
        x,
        path,
        epochs=settings.pretraining_epochs(len(x)),
        optimizer=settings.pretrain_optimizer(len(x)),
    )
    return model.autoencoder.get_weights()


def table(runs: list[dict]) -> str:
    """One Markdown row per run: the k-means start and the smallest cluster after some epochs."""
    shown = list(REPORTED_EPOCHS)
    lines = [
        "| dataset | pretraining | seed | variant | k-means ACC (smallest cluster) | "
        + " | ".join(f"smallest after epoch {e}" for e in shown)
        + " | clusters left | final ACC / NMI / ARI | k-means's smallest cluster holds (start → epoch 1 → 5) |",
        "|---|---|---|---|---|" + "---|" * len(shown) + "---|---|---|",
    ]
    order = {variant: i for i, variant in enumerate(VARIANTS)}
    runs = sorted(runs, key=lambda r: (r["dataset"], r["pretrain_schedule"], r["seed"], order[r["variant"]]))
    for r in runs:
        name = r["variant"] + (f" ({r['warmup']} steps)" if r["warmup"] else "")
        by_epoch = {record["epoch"]: record for record in r["epochs"]}
        smallest = [str(by_epoch[e]["sizes"][0]) if e in by_epoch else "" for e in shown]
        last = r["epochs"][-1]
        path = [r["init"].get("tracked_classes")] + [by_epoch.get(e, {}).get("tracked_classes") for e in (1, 5)]
        tracked = " → ".join(described(c) for c in path) if path[0] is not None else ""
        lines.append(
            f"| {r['dataset']} | {r['pretrain_schedule']} | {r['seed']} | {name} "
            f"| {r['init']['acc']:.4f} ({r['init']['sizes'][0]}) | "
            + " | ".join(smallest)
            + f" | {sum(s > 0 for s in last['sizes'])} | {last['acc']:.4f} / {last['nmi']:.4f} / {last['ari']:.4f} | "
            + tracked
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    a = parse()
    path = Path(a.results)
    done = series(path, table, a.table)
    if done is None:
        return
    x, y = datasets.load(a.dataset)
    weights = None
    for variant in a.variants:
        key = {"dataset": a.dataset, "seed": a.seed, "pretrain_schedule": a.pretrain_schedule, "variant": variant}
        if recorded(done, **key):
            print(f"{key}: already in {path}")
            continue
        weights = weights or autoencoder_weights(a, x, y)
        result = run(a, variant, x, y, weights)
        append_result(path, result)
        print(json.dumps({k: v for k, v in result.items() if k != "epochs"} | {"last": result["epochs"][-1]}))


if __name__ == "__main__":
    main()
