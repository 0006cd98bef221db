"""The command line: ``python cli.py --help``, ``python -m deepstab --help`` or ``deepstab --help``.

Thin by design: each command builds its run settings from the options (generated from the
settings dataclasses, :mod:`deepstab.runs.settings`), calls the run, and prints its summary.
"""

from __future__ import annotations

import functools
import sys
import warnings

import click

import deepstab
from deepstab import allocator, datasets, distributed
from deepstab.errors import DeepstabError, DeepstabNote
from deepstab.io import file_fault, is_file_fault
from deepstab.runs.centroid import CentroidRun, run_centroid
from deepstab.runs.centroid import summary as centroid_summary
from deepstab.runs.choose_k import run_choose_k
from deepstab.runs.common import format_metrics
from deepstab.runs.decs import DECSRun, run_decs, summary
from deepstab.runs.lfss import LFSSRun, run_lfss
from deepstab.runs.lfss import summary as lfss_summary
from deepstab.runs.predict import run_predict
from deepstab.runs.report import run_report
from deepstab.runs.settings import RunSettings, click_options
from deepstab.runs.stability import StabilityRun, run_stability


def friendly_errors(command):
    """Print a DeepstabError as one paragraph and exit with status 2, without a traceback; so
    also a fault of the file system (a full disk, permissions, a read-only disk) met in a write
    that does not go through :func:`deepstab.io.atomic_path` (a library's, a folder made)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (DeepstabError, OSError) as exc:
            if isinstance(exc, OSError) and not is_file_fault(exc):
                raise
            message = file_fault(exc.filename or "a file", exc) if isinstance(exc, OSError) else exc
            click.echo(f"Error: {message}", err=True)
            sys.exit(2)

    return wrapper


def show_notes(verbose: bool) -> None:
    """Print deepstab's notes as one plain line each; other libraries' warnings only when
    ``verbose``, in Python's usual form."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeepstabNote):
            click.echo(f"Note: {message}")
        elif verbose:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always" if verbose else "default", DeepstabNote)
    if not verbose:
        warnings.filterwarnings("ignore", category=Warning)
        warnings.filterwarnings("default", category=DeepstabNote)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(deepstab.__version__, prog_name="deepstab")
@click.option("-v", "--verbose", is_flag=True, help="Also show other libraries' warnings.")
def cli(verbose):
    """deepstab: deep clustering of images driven by sample stability."""
    show_notes(verbose)
    allocator.keep_large_blocks()  # large activations stay on the heap (deepstab/allocator.py)


@cli.command()
@click_options(DECSRun, "decs")
@friendly_errors
def decs(**options):
    """Cluster a dataset with DECS (IJCAI 2024): pretrain (or reuse) the autoencoder, cluster, evaluate, save."""
    run = DECSRun(**options)
    click.echo(summary(run, run_decs(run)))


@cli.command()
@click_options(LFSSRun, "lfss")
@friendly_errors
def lfss(**options):
    """Train LFSS (ICML 2025) on a dataset, cluster its target embeddings with k-means, evaluate, save."""
    run = LFSSRun(**options)
    result = run_lfss(run)
    if distributed.is_main():  # under torchrun, rank 0 speaks for all
        click.echo(lfss_summary(run, result))
    distributed.teardown()


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click_options(RunSettings, only=("dataset", "data_dir", "image_size"), required=("dataset",))
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="CSV file for the labels. [default: MODEL with .keras replaced by -<dataset>.csv]",
)
@friendly_errors
def predict(model_path, dataset, data_dir, image_size, output):
    """Label a dataset with a saved DECS, DEC, IDEC, DCN or LFSS model; prints ACC/NMI/ARI when the data has labels."""
    prediction = run_predict(model_path, dataset, data_dir, output, image_size)
    if prediction.metrics:
        click.echo(format_metrics(prediction.metrics))
    click.echo(f"Cluster sizes: {prediction.sizes['counts']}")
    click.echo(f"Wrote {len(prediction.labels)} labels to {prediction.labels_path}")


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click_options(RunSettings, only=("dataset", "data_dir", "image_size"), required=("dataset",))
@click.option(
    "--output",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the page (index.html) and its images. [default: MODEL with .keras replaced by -<dataset>-report]",
)
@click.option(
    "--export",
    type=click.Path(file_okay=False),
    default=None,
    help="Also sort the images into this new (or empty) folder: cluster-<k>/ per cluster and labels.csv; a folder: "
    "dataset's files hard-linked under their own names (copied where links cannot be made), other images as PNGs.",
)
@click.option("--copy", is_flag=True, help="With --export: copy the files instead of hard-linking them.")
@friendly_errors
def report(model_path, dataset, data_dir, image_size, output, export, copy):
    """Write a page of a saved model's clusters: their images, a map of the embedding, ACC/NMI/ARI with labels.

    The page (index.html) loads only the images beside it, so it opens from disk in any browser."""
    if copy and export is None:
        raise DeepstabError("--copy chooses how --export sorts the images; give --export DIR with it.")
    result = run_report(model_path, dataset, data_dir, output, image_size, export, copy)
    if result.metrics:
        click.echo(format_metrics(result.metrics))
    click.echo(f"Cluster sizes: {result.sizes['counts']}")
    click.echo(f"Wrote the cluster report to {result.page}")
    if result.export:
        done = result.export
        how = ", ".join(f"{done[key]} {key}" for key in ("linked", "copied", "written") if done[key])
        click.echo(f"Sorted {len(result.labels)} images into {export} ({how}); their labels are in {done['labels']}")


@cli.command(name="choose-k")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click_options(RunSettings, only=("dataset", "data_dir", "image_size", "seed"), required=("dataset",))
@click_options(DECSRun, only=("k_range",))
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="PNG file for the score against K. [default: MODEL with .keras replaced by -<dataset>-k.png]",
)
@friendly_errors
def choose_k(model_path, dataset, data_dir, image_size, seed, k_range, output):
    """Choose the number of clusters K for a dataset from a saved model's embedding, without labels.

    Prints the score of every K (the silhouette of resampled t-SNE maps, and how well the
    resamples' partitions agree) and the K chosen; `--n-clusters auto` on a training command
    does the same after pretraining."""
    choice, path = run_choose_k(model_path, dataset, data_dir, image_size, k_range, seed, output)
    click.echo(choice.table())
    click.echo(f"Chose {choice.describe()}")
    if path:
        click.echo(f"Wrote the score against K to {path}")


@cli.command()
@click_options(StabilityRun, "stability")
@friendly_errors
def stability(**options):
    """Train while tracking each sample's stability between epochs; report which samples are atypical."""
    report = run_stability(StabilityRun(**options))
    distributed.teardown()
    if not report:  # under torchrun, rank 0 reports
        return
    rec = report["recurrence"]
    click.echo(f"Least stable {rec['share']:.0%} at c of the epochs {rec['epochs']} (observed / random):")
    click.echo("  " + "  ".join(f"{r['times']}: {r['observed']} / {r['random']:.1f}" for r in rec["rows"]))
    table = report.get("accuracy_by_stability")
    if table:
        measure = table["measure"]
        bins = " ".join(f"{b[measure]:.3f}" for b in table["bins"])
        click.echo(f"{measure.capitalize()} by stability bin (least to most stable): {bins}")
    click.echo(f"Wrote {', '.join(report['files'])} to {options['output']}")


def _centroid_command(method: str, title: str):
    """``dec``, ``idec`` and ``dcn``: the options of :class:`CentroidRun` that the method takes."""

    @friendly_errors
    def command(**options):
        run = CentroidRun(method=method, **options)
        click.echo(centroid_summary(run, run_centroid(run)))

    command.__doc__ = (
        f"Cluster a dataset with {title} on the feed-forward autoencoder, optionally with BRB; evaluate, save."
    )
    return cli.command(name=method)(click_options(CentroidRun, method)(command))


dec = _centroid_command("dec", "DEC (ICML 2016)")
idec = _centroid_command("idec", "IDEC (IJCAI 2017)")
dcn = _centroid_command("dcn", "DCN (ICML 2017)")


@cli.command(name="datasets")
@click_options(RunSettings, only=("data_dir",))
@friendly_errors
def list_datasets(data_dir):
    """List every dataset name, its image shape, its source and whether it is available now."""
    rows = datasets.describe(data_dir)
    widths = {key: max(len(key), *(len(r[key]) for r in rows)) for key in ("name", "shape")}
    for row in rows:
        click.echo(
            f"{row['name']:<{widths['name']}}  {row['shape']:<{widths['shape']}}  {row['available']}"
            f"\n    {row['source']}"
        )
