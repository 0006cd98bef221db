"""deepstab command line: `python cli.py --help`."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

import deepstab  # noqa: F401  (selects the torch backend before Keras loads)
from deepstab import datasets
from deepstab.callbacks import COLLAPSE_ACTIONS
from deepstab.centroid_runner import CentroidRun, run_centroid
from deepstab.centroid_runner import summary as centroid_summary
from deepstab.errors import DeepstabError
from deepstab.losses import VARIANTS
from deepstab.runner import DEFAULT_SCHEDULES, PRESETS, DECSRun, run_decs, summary
from deepstab.lfss import BASES
from deepstab.lfss_runner import PRESETS as LFSS_PRESETS
from deepstab.lfss_runner import LFSSRun, run_lfss
from deepstab.lfss_runner import summary as lfss_summary
from deepstab.tracking import METHODS, StabilityRun, run_stability


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


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False), default=None, help="Folder holding dataset files. [default: $DEEPSTAB_DATA, else ./data]"
)


def data_options(default: str):
    """The --dataset and --data-dir options every training command shares."""

    def apply(command):
        return click.option("--dataset", default=default, help="Dataset name (see `datasets`), npz:PATH or folder:PATH.")(data_dir_option(command))

    return apply


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """deepstab: deep clustering of images driven by sample stability."""


def _describe(p: dict[str, int]) -> str:
    clustering = f"{p['iterations']} clustering iterations" if "iterations" in p else f"{p['cluster_epochs']} clustering epochs"
    return f"{p['pretrain_epochs']} pretraining epochs at batch {p['pretrain_batch_size']}, {clustering}"


def _preset_help() -> str:
    presets = "; ".join(f"{name}: {_describe(p)}" for name, p in PRESETS.items())
    exceptions = "; ".join(f"{name}: {_describe(p)}" for name, p in DEFAULT_SCHEDULES.items())
    return f"{presets}. The default preset of these datasets is shorter ({exceptions})"


@cli.command()
@data_options(default="digits")
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
@data_options(default="cifar10-jpg")
@click.option("--preset", type=click.Choice(list(LFSS_PRESETS)), default="paper", help="Schedule and network size. " + "; ".join(f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in LFSS_PRESETS.items()) + ".")
@click.option("--n-clusters", type=int, default=None, help="Number of clusters K. [default: the dataset's number of classes]")
@click.option("--epochs", type=int, default=None, help="Training epochs. [default: from --preset]")
@click.option("--batch-size", type=int, default=None, help="Batch size. [default: from --preset]")
@click.option("--lr", type=float, default=0.05, help="SGD learning rate at batch 256 (scaled linearly with the batch size), cosine decay per iteration; 10x for the predictor.")
@click.option("--eta", type=int, default=None, help="Warm-up epochs before the cluster-level loss (η). [default: the paper's per dataset, else from --preset]")
@click.option("--sigma", type=float, default=None, help="Noise σ before the predictor (Eq. 9). [default: the paper's per dataset, else 0.001]")
@click.option("--delta", type=float, default=0.1, help="Share δ of least stable samples left out of the cluster-level loss.")
@click.option("--lam", type=float, default=0.1, help="Weight λ of L_I + L_C (Eq. 10).")
@click.option("--tau", type=float, default=0.5, help="NT-Xent temperature τ.")
@click.option("--momentum", type=float, default=None, help="EMA momentum of the target network. [default: from --preset]")
@click.option("--weight-decay", type=float, default=5e-4, help="L2 weight decay.")
@click.option("--depth", type=click.Choice(["18", "34", "50"]), default=None, help="ResNet depth. [default: from --preset]")
@click.option("--width", type=float, default=None, help="ResNet channel multiplier. [default: from --preset]")
@click.option("--hidden", type=int, default=None, help="Hidden size of projector and predictor. [default: from --preset]")
@click.option("--dim", type=int, default=None, help="Representation size. [default: from --preset]")
@click.option("--base", type=click.Choice(BASES), default="byol", help="byol (LFSS proper), or L_I + L_C on simclr or moco (Table 6).")
@click.option("--stability/--no-stability", default=True, help="Use the sample-stability losses L_I and L_C; --no-stability trains the plain base method.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Model file (.keras); labels go beside it as .csv. [default: models/lfss-<dataset>.keras]")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", help="Default folder of the model file.")
@click.option("--checkpoint-every", type=int, default=1, help="Save a checkpoint every N epochs.")
@click.option("--resume", is_flag=True, help="Go on from the last checkpoint of an interrupted run with the same --output.")
@click.option("--eval-runs", type=int, default=10, help="k-means runs averaged for ACC/NMI/ARI (the paper: 10).")
@friendly_errors
def lfss(depth, **options):
    """Train LFSS (ICML 2025) on a dataset, cluster its target embeddings with k-means, evaluate, save."""
    run = LFSSRun(depth=int(depth) if depth else None, **options)
    click.echo(lfss_summary(run, run_lfss(run)))


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="Dataset name (see `datasets`), npz:PATH or folder:PATH.")
@data_dir_option
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="CSV file for the labels. [default: MODEL with .csv replaced by -<dataset>.csv]")
@friendly_errors
def predict(model_path, dataset, data_dir, output):
    """Label a dataset with a saved DECS, DEC, IDEC, DCN or LFSS model; prints ACC/NMI/ARI when the data has labels."""
    from deepstab.dec import DCN, DEC, IDEC
    from deepstab.decs import DECS
    from deepstab.lfss import LFSSModel
    from deepstab.metrics import cluster_sizes, evaluate
    from deepstab.runner import format_metrics, write_labels_csv
    from deepstab.saving import load_model

    model = load_model(model_path, expect=(DECS, DEC, IDEC, DCN, LFSSModel))
    x, y = datasets.load(dataset, data_dir, stream=isinstance(model, LFSSModel))
    expected = tuple(model.image_shape)
    if tuple(x.shape[1:]) != expected:
        raise DeepstabError(
            f"{model_path} was trained on images of shape {expected}, but {dataset!r} has images of "
            f"shape {tuple(x.shape[1:])}. Use data of the same size and channels."
        )
    if not isinstance(model, LFSSModel):  # Student-t assignments q; argmax = the nearest centroid
        q = model.predict(x, batch_size=1024, verbose=0)
        labels, confidence = q.argmax(axis=1), q.max(axis=1)
    else:
        labels, confidence = model.predict_labels(x), None
    path = Path(output) if output else Path(model_path).with_name(f"{Path(model_path).stem}-{datasets.slug(dataset)}.csv")
    write_labels_csv(path, labels, confidence, y)
    if y is not None:
        click.echo(format_metrics(evaluate(y, labels)))
    click.echo(f"Cluster sizes: {cluster_sizes(labels, model.n_clusters)['counts']}")
    click.echo(f"Wrote {len(labels)} labels to {path}")


@cli.command()
@data_options(default="digits")
@click.option("--method", type=click.Choice(METHODS), default="decs", help="The clustering method to train while tracking.")
@click.option("--epochs", type=int, default=30, help="Clustering epochs to train and track.")
@click.option("--track-every", type=int, default=1, help="Measure stability every K epochs (against the previous tracked point).")
@click.option("--output", type=click.Path(file_okay=False), default="stability-report", help="Folder for stability.csv, summary.json, the pictures, report.html and the model.")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="Continue training this saved model instead of starting from a pretrained autoencoder.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="default", help="Pretraining schedule when no --model is given (see `decs --help`).")
@click.option("--pretrain-epochs", type=int, default=None, help="Autoencoder pretraining epochs. [default: from --preset]")
@click.option("--pretrain-batch-size", type=int, default=None, help="Pretraining batch size. [default: from --preset]")
@click.option("--bins", type=int, default=10, help="Equal-count stability bins for accuracy by stability (Observation 1).")
@click.option("--share", type=float, default=0.1, help="Share of least (most) stable samples per epoch for recurrence and atypical samples.")
@click.option("--recurrence-epochs", type=int, default=5, help="Count the recurrence (Observation 2) over this many tracked epochs, spread evenly.")
@click.option("--seed", type=int, default=0, help="Random seed.")
@click.option("--models-dir", type=click.Path(file_okay=False), default="models", help="Where pretrained autoencoders are kept and reused.")
@friendly_errors
def stability(**options):
    """Train while tracking each sample's stability between epochs; report which samples are atypical."""
    report = run_stability(StabilityRun(**options))
    rec = report["recurrence"]
    click.echo(f"Least stable {rec['share']:.0%} at c of the epochs {rec['epochs']} (observed / random):")
    click.echo("  " + "  ".join(f"{r['times']}: {r['observed']} / {r['random']:.1f}" for r in rec["rows"]))
    table = report.get("accuracy_by_stability")
    if table:
        measure = table["measure"]
        click.echo(f"{measure.capitalize()} by stability bin (least to most stable): " + " ".join(f"{b[measure]:.3f}" for b in table["bins"]))
    click.echo(f"Wrote {', '.join(report['files'])} to {options['output']}")


def _centroid_command(method: str, title: str):
    """``dec``, ``idec`` and ``dcn``: the same options, plus each method's own weight."""

    @click.option("--n-clusters", type=int, default=None, help="Number of clusters K. [default: the dataset's number of classes]")
    @click.option("--embedding-dim", type=int, default=None, help="Embedding size e of d-1024-512-256-e. [default: K]")
    @click.option("--pretrain-epochs", type=int, default=250, help="Autoencoder pretraining epochs (MSE, Adam).")
    @click.option("--pretrain-batch-size", type=int, default=256, help="Pretraining batch size.")
    @click.option("--epochs", type=int, default=400, help="Clustering epochs.")
    @click.option("--batch-size", type=int, default=256, help="Clustering batch size.")
    @click.option("--lr", type=float, default=1e-3, help="Adam learning rate for both stages.")
    @click.option("--augment/--no-augment", default=True, help="Pretrain and cluster on shifted and rotated views.")
    @click.option("--brb", is_flag=True, help="Break the reclustering barrier (ICLR 2025): soft reset and re-clustering every --brb-interval epochs.")
    @click.option("--brb-interval", type=int, default=20, help="Epochs T between BRB interventions.")
    @click.option("--brb-alpha", type=float, default=0.8, help="Soft-reset factor α: θ ← α θ + (1 - α) φ.")
    @click.option("--brb-subsample", type=int, default=10000, help="Images embedded for BRB's k-means re-clustering.")
    @click.option("--brb-reset/--no-brb-reset", default=True, help="Do BRB's soft reset (--no-brb-reset: recluster-only ablation).")
    @click.option("--brb-recluster/--no-brb-recluster", default=True, help="Do BRB's re-clustering and moment reset (--no-brb-recluster: reset-only ablation).")
    @click.option("--brb-reset-embedding", is_flag=True, help="Include the embedding layer in the soft reset.")
    @click.option("--seed", type=int, default=0, help="Random seed.")
    @click.option("--output", type=click.Path(dir_okay=False), default=None, help=f"Model file (.keras); labels (.csv) and ACC over epochs (.png) go beside it. [default: models/{method}[-brb]-<dataset>.keras]")
    @click.option("--models-dir", type=click.Path(file_okay=False), default="models", help="Where pretrained autoencoders are kept and shared by dec, idec and dcn.")
    @click.option("--eval-every", type=int, default=1, help="Record the label change rate (and ACC/NMI/ARI with labels) every N epochs (reporting only).")
    @friendly_errors
    def command(**options):
        run = CentroidRun(method=method, **options)
        click.echo(centroid_summary(run, run_centroid(run)))

    if method in ("dec", "idec"):
        command = click.option("--target-interval", type=int, default=1, help="Refresh the target distribution P every N epochs.")(command)
    if method == "idec":
        command = click.option("--gamma", type=float, default=0.1, help="γ: weight of the clustering loss, L = L_r + γ L_c (IDEC Eq. 7).")(command)
    if method == "dcn":
        command = click.option("--lam", type=float, default=0.05, help="λ: weight of the k-means term (λ/2)||z - m||² (DCN Eq. 5).")(command)
    command.__doc__ = f"Cluster a dataset with {title} on the feed-forward autoencoder, optionally with BRB; evaluate, save."
    return cli.command(name=method)(data_options(default="usps")(command))


dec = _centroid_command("dec", "DEC (ICML 2016)")
idec = _centroid_command("idec", "IDEC (IJCAI 2017)")
dcn = _centroid_command("dcn", "DCN (ICML 2017)")


@cli.command(name="datasets")
@data_dir_option
@friendly_errors
def list_datasets(data_dir):
    """List every dataset name, its image shape, its source and whether it is available now."""
    rows = datasets.describe(data_dir)
    widths = {key: max(len(key), *(len(r[key]) for r in rows)) for key in ("name", "shape")}
    for row in rows:
        click.echo(f"{row['name']:<{widths['name']}}  {row['shape']:<{widths['shape']}}  {row['available']}\n    {row['source']}")


if __name__ == "__main__":
    cli()
