"""Run settings: one dataclass per command whose fields declare, once, their default, their help
text and their check; the click options of ``cli.py`` are generated from them.

A field made with :func:`setting` becomes the option ``--field-name``. Booleans that default to
``False`` become a flag (``--resume``), those that default to ``True`` a ``--x/--no-x`` pair.
A default that is the default of a model's constructor argument is read from that signature
(:func:`default_of`), so the class, the run and the command line cannot drift apart. Two
options of which one would override the other (:data:`CONFLICTS`) are refused together.

Example:

>>> from dataclasses import dataclass
>>> @dataclass
... class Demo(RunSettings):
...     epochs: int = setting(3, "Epochs.", check=checks.positive_int)
>>> Demo(epochs=5).epochs
5
>>> Demo(epochs=0)
Traceback (most recent call last):
...
deepstab.errors.DeepstabError: epochs must be a positive whole number, got 0.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable
from pathlib import Path

import click

from deepstab import checks, datasets
from deepstab.errors import DeepstabError
from deepstab.precision import DEFAULT_PRECISION, PRECISIONS

# Options of which one would silently override the other: a run refuses them together. By field
# name, for every run class that has both fields; a field counts as given when it differs from
# its default.
CONFLICTS: dict[tuple[str, str], str] = {
    ("iterations", "cluster_epochs"): "both set the length of the clustering stage, and the iterations would win",
    ("fresh", "resume"): "--fresh deletes the checkpoint that --resume would go on from",
    ("model", "preset"): "--model goes on training a saved model, so nothing is pretrained by a preset",
    ("model", "pretrain_epochs"): "--model goes on training a saved model, so nothing is pretrained",
    ("model", "pretrain_batch_size"): "--model goes on training a saved model, so nothing is pretrained",
}


# Settings added after checkpoints of earlier versions were written: a checkpoint records them
# only when they differ from their default, so those checkpoints still match a run that keeps it.
RECORDED_UNLESS_DEFAULT = ("precision",)

# The commands that train a model and write its cluster report at their end.
TRAINING_COMMANDS = ("decs", "dec", "idec", "dcn", "lfss", "stability")


def setting(
    default,
    help: str,
    *,
    check: Callable | None = None,
    choices: tuple | None = None,
    path: str | None = None,
    cli: bool = True,
    commands: tuple[str, ...] | None = None,
    training: bool = True,
):
    """A run-settings field: its ``default``, the option's ``help``, a ``check`` from
    :mod:`deepstab.checks` (applied unless the value is ``None``), the allowed ``choices``,
    ``path="file"`` or ``"dir"`` for path options, ``cli=False`` for fields the command line
    does not offer, ``commands`` when only some commands of a family offer it, and
    ``training=False`` for settings that do not change what is trained (where files go, what
    is reported), which a resumed run may change."""
    metadata = {
        "help": help,
        "check": check,
        "choices": choices,
        "path": path,
        "cli": cli,
        "commands": commands,
        "training": training,
    }
    return dataclasses.field(default=default, metadata=metadata)


def n_clusters_setting():
    """The ``--n-clusters`` field of every training run (a number, or ``auto``)."""
    return setting(
        None,
        "Number of clusters K, or 'auto' to choose it without labels from the learned embedding (the silhouette of "
        "resampled t-SNE maps; see --k-range). [default: the dataset's number of classes; auto when the data has "
        "no labels]",
        check=checks.n_clusters_or_auto,
    )


def k_range_setting():
    """The ``--k-range`` field of every training run."""
    from deepstab.analysis.k_choice import K_RANGE

    return setting(
        None,
        f"The candidates of --n-clusters auto, as LOW:HIGH. [default: {K_RANGE[0]}:{K_RANGE[1]}]",
        check=checks.k_range,
    )


def default_of(cls: type, argument: str):
    """The default of ``argument`` in ``cls.__init__``: the one source of a model default."""
    return inspect.signature(cls.__init__).parameters[argument].default


@dataclasses.dataclass
class RunSettings:
    """What every command shares. Subclasses add their fields and may override
    :meth:`resolve`, which fills the fields left ``None`` (presets) before the checks run."""

    dataset: str = setting("digits", "Dataset name (see `datasets`), npz:PATH or folder:PATH.")
    data_dir: str | None = setting(
        None, "Folder holding dataset files. [default: $DEEPSTAB_DATA, else ./data]", path="dir", training=False
    )
    image_size: int | None = setting(
        None,
        "Resize the images to NxN (bilinear): a folder: dataset's when it is converted (needed when their sizes "
        "differ), any other dataset's when it is loaded.",
        check=checks.positive_int,
    )
    seed: int = setting(0, "Random seed.", check=checks.non_negative_int)
    precision: str = setting(
        DEFAULT_PRECISION,
        "Training precision: 32 (float32), or Keras mixed precision with weights in float32 and the networks "
        "computed in bf16 (bfloat16) or fp16 (float16, with loss scaling). The Student-t assignments, Otsu's "
        "threshold, LFSS's normalised embeddings and k-means stay float32. For GPUs: a CPU without bfloat16 "
        "units trains slower in bf16.",
        choices=tuple(PRECISIONS),
        commands=TRAINING_COMMANDS,
    )
    fresh: bool = setting(
        False,
        "Start over: delete the checkpoint that an interrupted run on the same --output left (and that of its "
        "autoencoder's pretraining) instead of resuming it.",
        training=False,
    )
    report: bool = setting(
        True,
        "Write the cluster report beside the model: <model>-report/index.html, a page that shows what each cluster "
        "holds, a map of the embedding and, with labels, the confusion matrix (`report` writes it for any model).",
        training=False,
        commands=TRAINING_COMMANDS,
    )
    verbose: int | None = setting(
        None, "Keras fit verbosity (None: bars on a terminal, else a line per epoch).", cli=False, training=False
    )

    def __post_init__(self):
        self._refuse_conflicts()
        if self.verbose is None:
            self.verbose = 1 if sys.stdout.isatty() else 2
        self.resolve()
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if value is None:
                continue
            if meta.get("choices") is not None:
                checks.choice(field.name, value, meta["choices"])
            if meta.get("check") is not None:
                setattr(self, field.name, meta["check"](field.name, value))
        self.validate()

    def _refuse_conflicts(self) -> None:
        """Refuse two options of :data:`CONFLICTS` given together (before presets fill anything)."""
        given = {f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        for (first, second), why in CONFLICTS.items():
            if first in given and second in given:
                raise DeepstabError(
                    f"--{first.replace('_', '-')} and --{second.replace('_', '-')} cannot be given together: {why}. "
                    f"Give only one of them."
                )

    def resolve(self) -> None:
        """Fill fields left ``None`` from presets (nothing here)."""

    def validate(self) -> None:
        """Checks that involve several fields (nothing here)."""

    @property
    def slug(self) -> str:
        """The dataset name made safe for file names."""
        return datasets.slug(self.dataset)

    def training_settings(self) -> dict:
        """The settings that change what is trained (what a checkpoint must match)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("training", True)
            and not (f.name in RECORDED_UNLESS_DEFAULT and getattr(self, f.name) == f.default)
        }


def _click_type(field: dataclasses.Field, hint) -> object:
    meta = field.metadata
    if meta.get("choices") is not None:
        return click.Choice([str(c) for c in meta["choices"]])
    if meta.get("path") == "file":
        return click.Path(dir_okay=False)
    if meta.get("path") == "dir":
        return click.Path(file_okay=False)
    base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    return {int: click.INT, float: click.FLOAT}.get(base[0], click.STRING)


def _from_choice(choices: tuple):
    """A click callback that gives back the choice's own value (``18``, not ``"18"``)."""
    by_text = {str(c): c for c in choices}
    return lambda ctx, param, value: None if value is None else by_text[value]


def click_options(
    cls: type[RunSettings],
    command: str | None = None,
    only: tuple[str, ...] | None = None,
    required: tuple[str, ...] = (),
) -> Callable:
    """A decorator adding one click option per command-line field of ``cls`` (in field order;
    ``command`` picks the fields of one command of a family, ``only`` names the fields to take,
    and the ``required`` ones get no default)."""
    hints = typing.get_type_hints(cls)
    options = []
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("cli", False) or (meta["commands"] and command not in meta["commands"]):
            continue
        if only is not None and field.name not in only:
            continue
        name = "--" + field.name.replace("_", "-")
        kwargs = {"default": field.default, "help": meta["help"], "show_default": field.default is not None}
        if field.name in required:
            kwargs.update(default=None, required=True, show_default=False)
        if hints[field.name] is bool:
            decls = [name] if field.default is False else [f"{name}/--no-{name[2:]}"]
            options.append(click.option(*decls, field.name, is_flag=True, **kwargs))
            continue
        if meta.get("choices") is not None:
            kwargs["callback"] = _from_choice(meta["choices"])
            kwargs["default"] = None if field.default is None else str(field.default)
        options.append(click.option(name, field.name, type=_click_type(field, hints[field.name]), **kwargs))

    def apply(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


def output_path(settings: RunSettings, name: str) -> Path:
    """``settings.output``, else ``<models_dir>/<name>.keras``."""
    return Path(settings.output) if settings.output else Path(settings.models_dir) / f"{name}.keras"
