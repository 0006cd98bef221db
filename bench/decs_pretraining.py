"""DECS pretraining recipes: k-means ACC of the embedding, and the final DECS ACC, against wall time.

Each run pretrains the DECS autoencoder under one recipe and, every ``--eval-every`` epochs,
embeds the images and runs k-means (20 restarts, as the clustering stage's initialisation):
it records the pretraining wall time so far (the checks excluded), the reconstruction loss,
k-means ACC/NMI/ARI, and the unlabelled signals a stopping rule may use (the agreement of the
k-means partition with the previous check's, the share of the embedding's variance that k-means
leaves within clusters). Then DECS clusters from the final embedding (the default clustering
stage) and the final model's ACC/NMI/ARI are recorded. One JSON line per run is appended to
``--results``; a run already there (same name, dataset and seed) is skipped.

    python bench/decs_pretraining.py --dataset usps --batch 32 --epochs 100 --eval-every 10 --cluster-at 60 100
    python bench/decs_pretraining.py --table --results docs/data/decs_pretraining.jsonl
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
from sklearn.metrics import adjusted_rand_score

from deepstab import datasets
from deepstab.methods.decs import DECS
from deepstab.metrics import evaluate
from deepstab.nn.kmeans import kmeans
from deepstab.nn.optimizers import Adam
from deepstab.runs.settings import default_of

# The DECS augmentation (shifts up to this share of the side, rotations up to these degrees).
DECS_SHIFT, DECS_ROTATION = default_of(DECS, "shift"), default_of(DECS, "rotation")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=False)
    p.add_argument("--dataset", default="usps")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="constant", choices=("constant", "cosine", "linear"))
    p.add_argument("--warmup", type=float, default=0.0, help="warm-up epochs (linear from 0)")
    p.add_argument("--final-share", type=float, default=0.0, help="last learning rate as a share of --lr")
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--shift", type=float, default=DECS_SHIFT)
    p.add_argument("--rotation", type=float, default=DECS_ROTATION)
    p.add_argument("--augment-from", type=int, default=0, help="pretrain without augmentation before this epoch")
    p.add_argument("--cluster-shift", type=float, help="the clustering stage's shift [default: --shift]")
    p.add_argument("--cluster-rotation", type=float, help="the clustering stage's rotation [default: --rotation]")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay of the pretraining's Adam")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cluster-iters", type=int, default=3000)
    p.add_argument("--cluster-at", type=int, nargs="*", default=[], help="also cluster from these epochs' weights")
    p.add_argument("--results", default="decs_pretraining.jsonl")
    p.add_argument("--table", action="store_true")
    p.add_argument("--embeddings", help="folder to keep each check's embedding in (NPZ)")
    return p.parse_args()


def learning_rate(a, steps_per_epoch: int):
    if a.schedule == "constant" and not a.warmup:
        return a.lr
    total = a.epochs * steps_per_epoch
    warm = int(a.warmup * steps_per_epoch)

    class Schedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            up = a.lr * keras.ops.minimum(1.0, (step + 1) / max(warm, 1))
            t = keras.ops.clip((step - warm) / max(total - warm, 1), 0.0, 1.0)
            low = a.lr * a.final_share
            if a.schedule == "cosine":
                down = low + (a.lr - low) * 0.5 * (1 + keras.ops.cos(np.pi * t))
            elif a.schedule == "linear":
                down = a.lr + (low - a.lr) * t
            else:
                down = a.lr
            return keras.ops.where(step < warm, up, down)

    return Schedule()


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    keras.utils.set_random_seed(a.seed)
    x, y = datasets.load(a.dataset)
    k = len(np.unique(y))
    model = DECS(k, x.shape[1:], shift=a.shift, rotation=a.rotation, seed=a.seed)
    ae = model.autoencoder
    steps = int(np.ceil(len(x) / a.batch))
    ae.prepare(x)
    ae.compile(optimizer=Adam(learning_rate(a, steps), beta_2=a.beta2, weight_decay=a.weight_decay or None))
    seconds, previous, curve, epoch, snapshots = 0.0, None, [], 0, {}
    while epoch < a.epochs:
        n = min([a.eval_every, a.epochs - epoch] + [e - epoch for e in [*a.cluster_at, a.augment_from] if e > epoch])
        late = epoch < a.augment_from  # the augmentation is off until --augment-from
        ae.augment.shift, ae.augment.rotation = (0.0, 0.0) if late else (a.shift, a.rotation)
        start = time.perf_counter()
        h = ae.fit(x, batch_size=a.batch, epochs=epoch + n, initial_epoch=epoch, verbose=0)
        seconds += time.perf_counter() - start
        epoch += n
        z = model.embed(x)
        if a.embeddings:
            Path(a.embeddings).mkdir(parents=True, exist_ok=True)
            np.savez(Path(a.embeddings) / f"{a.name}-{a.dataset}-s{a.seed}-e{epoch}.npz", z=z, y=y)
        centres, labels = kmeans(z, k, n_init=20, seed=a.seed)
        within = float(((z - centres[labels]) ** 2).sum() / ((z - z.mean(0)) ** 2).sum())
        row = {"epoch": epoch, "seconds": round(seconds, 1), "loss": float(h.history["loss"][-1])}
        row["clean_mse"] = float(ae.evaluate(x, batch_size=1024, verbose=0))
        row |= {f"km_{m}": v for m, v in evaluate(y, labels).items()}
        row |= {"within": within, "ari_prev": None if previous is None else adjusted_rand_score(previous, labels)}
        previous = labels
        curve.append(row)
        if epoch in a.cluster_at:
            snapshots[epoch] = (seconds, model.autoencoder.get_weights())
        print(json.dumps(row), flush=True)
    snapshots[a.epochs] = (seconds, model.autoencoder.get_weights())
    ae.augment.shift, ae.augment.rotation = clustering_augmentation(vars(a))
    points = [cluster(model, x, y, a, epoch, *snapshots[epoch]) for epoch in sorted(set(a.cluster_at) | {a.epochs})]
    return {
        **{k_: v for k_, v in vars(a).items() if k_ not in ("results", "table")},
        "curve": curve,
        "pretrain_seconds": round(seconds, 1),
        "points": points,
        **{k_: points[-1][k_] for k_ in ("init", "final", "collapsed", "cluster_seconds")},
    }


def clustering_augmentation(r: dict) -> tuple[float, float]:
    """The clustering stage's (shift, rotation) of a run's settings ``r``: the pretraining's
    unless ``cluster_shift`` or ``cluster_rotation`` are given."""
    shift, rotation = r.get("cluster_shift"), r.get("cluster_rotation")
    return (
        r.get("shift", DECS_SHIFT) if shift is None else shift,
        r.get("rotation", DECS_ROTATION) if rotation is None else rotation,
    )


def augmentation_label(shift: float, rotation: float) -> str:
    """How the table names an augmentation."""
    return "no augmentation" if (shift, rotation) == (0, 0) else f"shift {shift:g} rotation {rotation:g}°"


def cluster(model: DECS, x, y, a, epoch: int, seconds: float, weights: list) -> dict:
    """DECS's clustering stage (k-means initialisation, ``--cluster-iters`` iterations at batch
    256, Adam 1e-3) from the autoencoder's ``weights`` of ``epoch``."""
    model.autoencoder.set_weights(weights)
    model.size_prior_weight = 0.0  # a collapse fallback of an earlier point switched it on
    keras.utils.set_random_seed(a.seed)
    start = time.perf_counter()
    init = model.initialize_centroids(x)
    model.compile(optimizer=Adam(1e-3))
    model.fit(x, batch_size=256, epochs=int(np.ceil(a.cluster_iters / np.ceil(len(x) / 256))), verbose=0)
    guard = model.collapse_guard
    point = {
        "epoch": epoch,
        "pretrain_seconds": round(seconds, 1),
        "cluster_seconds": round(time.perf_counter() - start, 1),
        "init": evaluate(y, init),
        "final": evaluate(y, model.predict_labels(x)),
        "collapsed": None if guard is None else guard.collapsed_epoch,
    }
    print(json.dumps(point), flush=True)
    return point


def table(runs: list[dict]) -> str:
    """One Markdown row per clustering point: the recipe, the pretraining it had, k-means on its
    embedding, and the final DECS model."""
    lines = [
        "| dataset | pretraining recipe | seed | pretraining epochs | pretraining s | k-means ACC / NMI "
        "| clustering iterations | DECS final ACC / NMI / ARI | collapse flagged | clustering s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        recipe = f"batch {r['batch']}, lr {r['lr']:g} {r['schedule']}" + (
            f", warm-up {r['warmup']:g}" if r["warmup"] else ""
        )
        if r.get("weight_decay"):
            recipe += f", weight decay {r['weight_decay']:g}"
        augmentation = (r.get("shift", DECS_SHIFT), r.get("rotation", DECS_ROTATION))
        clustering = clustering_augmentation(r)
        if augmentation != (DECS_SHIFT, DECS_ROTATION):
            recipe += ", " + augmentation_label(*augmentation)
        if r.get("augment_from"):
            recipe += f", augmentation from epoch {r['augment_from']}"
        if clustering != augmentation:
            recipe += "; clustering with " + augmentation_label(*clustering)
        points = r.get("points") or ([{"epoch": r["epochs"], **r}] if "final" in r else [])
        for p in points:
            init, final = p["init"], p["final"]
            scores = f"{final['acc']:.4f} / {final['nmi']:.4f} / {final['ari']:.4f}"
            flagged = "-" if p["collapsed"] is None else f"epoch {p['collapsed'] + 1}"
            lines.append(
                f"| {r['dataset']} | {recipe} | {r['seed']} | {p['epoch']} | {p['pretrain_seconds']:.0f} "
                f"| {init['acc']:.3f} / {init['nmi']:.3f} | {r['cluster_iters']} | {scores} "
                f"| {flagged} | {p['cluster_seconds']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    a = parse()
    path = Path(a.results)
    done = series(path, table, a.table)
    if done is None:
        return
    a.name = a.name or f"{a.schedule}-{a.epochs}-b{a.batch}-lr{a.lr:g}"
    if recorded(done, name=a.name, dataset=a.dataset, seed=a.seed):
        print(f"{a.name} {a.dataset} seed {a.seed}: already in {path}")
        return
    result = run(a)
    append_result(path, result)
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}))


if __name__ == "__main__":
    main()
