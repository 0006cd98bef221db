"""deepstab command line: `python cli.py --help`."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

import deepstab  # noqa: F401  (selects the torch backend before Keras loads)
from deepstab import datasets
from deepstab.callbacks import COLLAPSE_ACTIONS
from deepstab.errors import DeepstabError
from deepstab.losses import VARIANTS
from deepstab.runner import PRESETS, DECSRun, run_decs, summary


def friendly_errors(command):
    """Print a DeepstabError as one paragraph and exit with status 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DeepstabError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """deepstab: deep clustering of images driven by sample stability."""


def _preset_help() -> str:
    return "; ".join(
        f"{name}: {p['pretrain_epochs']} pretraining epochs at batch {p['pretrain_batch_size']}, "
        + (f"{p['iterations']} clustering iterations" if "iterations" in p else f"{p['cluster_epochs']} clustering epochs")
        for name, p in PRESETS.items()
    )


@cli.command()
@click.option("--dataset", default="digits", help="Dataset name (see `datasets`), npz:PATH or folder:PATH.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files. [default: $DEEPSTAB_DATA, else ./data]")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", help=f"Schedule. {_preset_help()}.")
@click.option("--n-clusters", type=int, default=None, help="Number of clusters. [default: the dataset's number of classes]")
@click.option("--pretrain-epochs", type=int, default=None, help="Autoencoder pretraining epochs. [default: from --preset]")
@click.option("--pretrain-batch-size", type=int, default=None, help="Pretraining batch size. [default: from --preset]")
@click.option("--iterations", type=int, default=None, help="Clustering iterations (batches), rounded up to whole epochs. [default: from --preset]")
@click.option("--batch-size", type=int, default=256, help="Clustering batch size.")
@click.option("--lr", type=float, default=1e-3, help="Adam learning rate for both stages.")
@click.option("--variant", type=click.Choice(VARIANTS), default="paper", help="Loss: 'paper' (Eqs. 6-8) or 'reference' (the authors' released code).")
@click.option("--alpha", type=float, default=1.0, help="Student-t degrees of freedom (Eq. 5).")
@click.option("--lam", type=float, default=None, help="λ of Eq. 7. [default: 0.8 for paper, 0.4 for reference]")
@click.option("--recon-weight", type=float, default=0.0, help="Weight of the reconstruction term of Eq. 1 during clustering.")
@click.option("--size-prior", type=float, default=0.0, help="Weight of KL(mean q || uniform), an optional guard against collapse.")
@click.option("--on-collapse", type=click.Choice(COLLAPSE_ACTIONS), default="fallback", help="What to do when a cluster empties or shrinks: fallback (restore the last healthy weights once and go on with the size prior at weight 1), restore (restore and stop), stop, or warn.")
@click.option("--collapse-share", type=float, default=0.25, help="A cluster smaller than this share of an even split (1/K) counts as collapsing.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Model file (.keras); labels go beside it as .csv. [default: models/decs-<dataset>.keras]")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", help="Where pretrained autoencoders are kept and reused.")
@click.option("--eval-every", type=int, default=10, help="Print ACC/NMI/ARI every N epochs when labels exist (reporting only).")
@friendly_errors
def decs(**options):
    """Cluster a dataset with DECS (IJCAI 2024): pretrain (or reuse) the autoencoder, cluster, evaluate, save."""
    run = DECSRun(**options)
    click.echo(summary(run, run_decs(run)))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="Dataset name (see `datasets`), npz:PATH or folder:PATH.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files. [default: $DEEPSTAB_DATA, else ./data]")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="CSV file for the labels. [default: MODEL with .csv replaced by -<dataset>.csv]")
@friendly_errors
def predict(model_path, dataset, data_dir, output):
    """Label a dataset with a saved model; prints ACC/NMI/ARI when the data has labels."""
    from deepstab.decs import DECS
    from deepstab.metrics import cluster_sizes, evaluate
    from deepstab.runner import format_metrics, write_labels_csv
    from deepstab.saving import load_model

    model = load_model(model_path, expect=DECS)
    x, y = datasets.load(dataset, data_dir)
    expected = tuple(model.autoencoder.image_shape)
    if tuple(x.shape[1:]) != expected:
        raise DeepstabError(
            f"{model_path} was trained on images of shape {expected}, but {dataset!r} has images of "
            f"shape {tuple(x.shape[1:])}. Use data of the same size and channels."
        )
    q = model.predict(x, batch_size=1024, verbose=0)
    labels = q.argmax(axis=1)
    path = Path(output) if output else Path(model_path).with_name(f"{Path(model_path).stem}-{datasets.slug(dataset)}.csv")
    write_labels_csv(path, labels, q.max(axis=1), y)
    if y is not None:
        click.echo(format_metrics(evaluate(y, labels)))
    click.echo(f"Cluster sizes: {cluster_sizes(labels, model.n_clusters)['counts']}")
    click.echo(f"Wrote {len(labels)} labels to {path}")


@cli.command(name="datasets")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files. [default: $DEEPSTAB_DATA, else ./data]")
@friendly_errors
def list_datasets(data_dir):
    """List every dataset name, its image shape, its source and whether it is available now."""
    rows = datasets.describe(data_dir)
    widths = {key: max(len(key), *(len(r[key]) for r in rows)) for key in ("name", "shape")}
    for row in rows:
        click.echo(f"{row['name']:<{widths['name']}}  {row['shape']:<{widths['shape']}}  {row['available']}\n    {row['source']}")


if __name__ == "__main__":
    cli()
