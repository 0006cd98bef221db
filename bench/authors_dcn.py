"""The BRB authors' own DCN, run here: their ``src/deep`` (autoencoder, pretraining loop, DCN
module, BRB) trains on deepstab's data, so that a gap between deepstab's DCN and the BRB paper
can be told apart from a gap between the paper and what the authors' code gives on this
machine.

Their code is not part of deepstab and is not copied: ``--authors`` points at a checkout of
https://github.com/Probabilistic-and-Interactive-ML/breaking-the-reclustering-barrier (for
example ``git -C <mirror> archive HEAD src config | tar -x -C /tmp/brb``). Its modules are
imported from there as they are. Four things are replaced:

- ``wandb``, ``tyro``, ``sklearn_extra``, ``pynvml`` and ``pandas`` by import stubs. The code
  paths that run use only ``wandb_run.log`` (a no-op here) and type annotations; ``KMedoids``
  (re-clustering by k-medoids) and ``pandas`` (a settings printout) are never called.
- ``torchvision``, which this machine must not install, by its absence. Only their data
  loaders use it (``torchvision.transforms.v2``), and this script builds those loaders itself,
  the same way (``src/datasets/augmentation_dataloader.py``):
  - images in [0, 1], one mean and std (unbiased) per channel computed on the unresized images;
  - bilinear resizing to 28x28;
  - the clean view is the resized image, normalised and flattened;
  - the augmented view first applies ``RandomAffine(±16°, translate 0.1, x-shear ±8°, fill 0,
    nearest)`` to the resized image, then normalises. Here it is deepstab's
    :class:`~deepstab.nn.augment.RandomAffine`, which samples as torchvision's does.
  - The loaders yield ``[index, augmented, clean]``, shuffled with full batches, for
    clustering; ``[index, clean]``, shuffled, for pretraining; and ``[index, clean]`` in order
    for the start and the evaluation.
- The data come from :func:`deepstab.datasets.load` (USPS: all 9,298 images).
- The run's seeds follow their ``train.py``: ``np.random.RandomState(seed)`` seeds torch, NumPy
  and ``random``.

Their protocol for the paper's table (``config/autoencoder/baseline_comp.py``):
- ``feedforward_large`` with batch normalisation: ``d-1024-512-256-K``, ReLU;
- Adam at 1e-3, 250 pretraining epochs and 400 clustering epochs at batch 256;
- λ = 0.025, augmentation invariance;
- BRB: α = 0.8, T = 20, k-means re-clustering on a 10,000-image subsample, or no intervention
  for the plain runs.

The final ACC/NMI/ARI is that of DCN's own labels on every image
(``BRB_DCN.dc_labels_``, as their ``train.py`` evaluates it), scored with
:func:`deepstab.metrics.evaluate`. Each finished run is appended to ``--results``; runs already
there are skipped.

    git -C ../.mirror/<owner>+breaking-the-reclustering-barrier/repo archive HEAD src config | tar -x -C /tmp/brb
    DEEPSTAB_DATA=../shared/data OMP_NUM_THREADS=1 python bench/authors_dcn.py --authors /tmp/brb --seeds 0 1 2
    python bench/authors_dcn.py --table-only
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import numpy as np
import torch
import torch.nn.functional as F
from results import append_result, recorded, series

from deepstab import datasets
from deepstab.metrics import evaluate
from deepstab.nn.augment import RandomAffine

SIDE = 28  # their resize for grey images
BATCH = 256
PAPER = {False: (78.29, 0.97), True: (80.10, 1.49)}  # DCN, DCN+BRB on USPS, ACC % (BRB paper)


class _NoRun:
    """What their code calls on a wandb run: nothing is logged."""

    def log(self, *args, **kwargs) -> None:
        pass


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class _Subscriptable:
    """``FlagConversionOff[bool]`` in their dataclasses' annotations: the type itself."""

    def __getitem__(self, item):
        return item


def import_authors(path: str) -> dict:
    """Their modules, imported from the checkout at ``path`` with the stubs in place."""
    if not (Path(path) / "src" / "deep" / "brb_dcn.py").exists():
        sys.exit(f"--authors {path}: not a checkout of the BRB authors' repository (no src/deep/brb_dcn.py)")
    _stub("wandb", Image=object, init=None)
    _stub("wandb.sdk")
    _stub("wandb.sdk.lib", RunDisabled=_NoRun)
    _stub("wandb.wandb_run", Run=_NoRun)
    _stub("tyro", cli=None)
    _stub("tyro.conf", FlagConversionOff=_Subscriptable())
    _stub("sklearn_extra")
    _stub("sklearn_extra.cluster", KMedoids=object)
    _stub("pandas")
    _stub("pynvml")
    _stub("pynvml.smi", nvidia_smi=object)
    _stub("torchvision")
    _stub("torchvision.models")
    _stub("torchvision.models._api", WeightsEnum=object, Weights=object)
    sys.path.insert(0, str(Path(path).resolve()))
    from config.brb_config import BRBArgs
    from config.optimizer_config import DCOptimizerArgs, PretrainOptimizerArgs
    from src.deep.autoencoders import FeedforwardAutoencoder
    from src.deep.brb_dcn import BRB_DCN

    del sys.modules["pandas"]  # scikit-learn looks pandas up there: it must not find the stub

    return {
        "BRBArgs": BRBArgs,
        "DCOptimizerArgs": DCOptimizerArgs,
        "PretrainOptimizerArgs": PretrainOptimizerArgs,
        "FeedforwardAutoencoder": FeedforwardAutoencoder,
        "BRB_DCN": BRB_DCN,
    }


class Loaders:
    """Their three loaders on ``x`` (NHWC in [0, 1]), built as their ``augmentation_dataloader``."""

    def __init__(self, x: np.ndarray, seed: int):
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32))
        self.mean = images.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = images.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.resized = F.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
        self.clean = self.normalised(self.resized)
        self.affine = RandomAffine(0.1, 16.0, 8.0, seed=seed)
        self.index = torch.arange(len(x))

    def normalised(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean) / self.std).flatten(1)

    def views(self, indices: list) -> list:
        index = torch.as_tensor(indices)
        resized = self.resized[index].permute(0, 2, 3, 1)
        augmented = torch.as_tensor(self.affine(resized, training=True)).permute(0, 3, 1, 2)
        return [index, self.normalised(augmented), self.clean[index]]

    def clean_batches(self, shuffle: bool) -> torch.utils.data.DataLoader:
        dataset = torch.utils.data.TensorDataset(self.index, self.clean)
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=shuffle)

    def augmented_batches(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            range(len(self.index)), batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=self.views
        )


def seed_everything(seed: int) -> None:
    """As their ``train.py``: the first word of ``RandomState(seed)``'s state seeds torch, NumPy, random."""
    first = int(np.random.RandomState(seed).get_state()[1][0])
    torch.manual_seed(first)
    np.random.seed(first)
    random.seed(first)


def run(authors: dict, args: argparse.Namespace, x: np.ndarray, y: np.ndarray, seed: int, brb: bool) -> dict:
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    loaders = Loaders(x, seed)
    k = len(np.unique(y))
    ae = authors["FeedforwardAutoencoder"](
        layers=[SIDE * SIDE * x.shape[-1], 1024, 512, 256, k], activation_fn=torch.nn.ReLU, batch_norm=True
    )
    start = time.perf_counter()
    ae.fit(
        n_epochs=args.pretrain_epochs,
        optimizer_params=authors["PretrainOptimizerArgs"](optimizer="adam", lr=1e-3),
        dataloader=loaders.clean_batches(shuffle=True),
        optimizer_class=torch.optim.Adam,
        wandb_run=_NoRun(),
    )
    ae.eval()
    pretrain_seconds = time.perf_counter() - start
    reset = authors["BRBArgs"](
        reset_weights=brb,
        recluster=brb,
        recalculate_centers=False,
        reset_momentum=brb,
        reset_interpolation_factor=0.8,
        reset_interval=20,
        subsample_size=10000,
        reset_embedding=False,
    )
    dcn = authors["BRB_DCN"](
        n_clusters=k,
        clustering_epochs=args.epochs,
        cluster_loss_weight=0.025,
        representation_loss_weight=1.0,
        augmentation_invariance=True,
        custom_dataloaders=(
            loaders.augmented_batches(),
            loaders.clean_batches(shuffle=False),
            loaders.clean_batches(shuffle=False),
        ),
        autoencoder=ae,
        optimizer_class=torch.optim.Adam,
        clustering_optimizer_params=authors["DCOptimizerArgs"](optimizer="adam", lr=1e-3, scheduler_name="none"),
        reset_args=reset,
        device=torch.device("cpu"),
        wandb_run=_NoRun(),
        log_interval=args.log_interval,
    )
    start = time.perf_counter()
    dcn.fit(X=None, y=y.tolist())
    return {
        "dataset": args.dataset,
        "seed": seed,
        "brb": brb,
        "pretrain_epochs": args.pretrain_epochs,
        "epochs": args.epochs,
        **evaluate(y, np.asarray(dcn.dc_labels_)),
        "pretrain_seconds": round(pretrain_seconds),
        "cluster_seconds": round(time.perf_counter() - start),
        "threads": os.environ.get("OMP_NUM_THREADS", "all"),
    }


def table(rows: list[dict]) -> str:
    lines = ["| run | seeds | ACC (each seed) | ACC mean ± std | NMI | paper ACC |", "|---|---|---|---|---|---|"]
    for brb in (False, True):
        runs = sorted((r for r in rows if r["brb"] == brb), key=lambda r: r["seed"])
        if not runs:
            continue
        accs = [r["acc"] for r in runs]
        nmi = np.mean([r["nmi"] for r in runs])
        name = "authors' DCN" + ("+BRB" if brb else "")
        paper = "{:.2f} ± {:.2f}".format(*PAPER[brb])
        each = " / ".join(f"{a:.4f}" for a in accs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        mean = f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs):.2f}"
        lines.append(f"| {name} | {seeds} | {each} | {mean} | {nmi:.3f} | {paper} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", help="a checkout of the BRB authors' repository (src/ and config/)")
    parser.add_argument("--dataset", default="usps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", choices=("plain", "brb"), default=["brb", "plain"])
    parser.add_argument("--pretrain-epochs", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--log-interval", type=int, default=400, help="their label check every N epochs")
    parser.add_argument("--results", default="docs/data/authors_dcn.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    rows = series(args.results, table, args.table_only)
    if rows is None:
        return
    if not args.authors:
        parser.error("--authors is required (a checkout of the BRB authors' repository)")
    authors = import_authors(args.authors)
    x, y = datasets.load(args.dataset)
    for seed in args.seeds:
        for brb in (mode == "brb" for mode in args.modes):
            key = dict(
                dataset=args.dataset, seed=seed, brb=brb, pretrain_epochs=args.pretrain_epochs, epochs=args.epochs
            )
            if recorded(rows, **key):
                continue
            row = run(authors, args, x, y, seed, brb)
            append_result(args.results, row)
            rows.append(row)
            print(row, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
