"""Run settings: one source for every default and help text, checks that refuse nonsense."""

import dataclasses

import pytest

from deepstab.cli import cli
from deepstab.errors import DeepstabError
from deepstab.methods.dec import DCN, IDEC
from deepstab.methods.lfss import LFSSModel
from deepstab.runs.centroid import CentroidRun
from deepstab.runs.decs import DECSRun
from deepstab.runs.lfss import LFSSRun
from deepstab.runs.stability import StabilityRun

COMMANDS = {
    "decs": DECSRun,
    "lfss": LFSSRun,
    "stability": StabilityRun,
    "dec": CentroidRun,
    "idec": CentroidRun,
    "dcn": CentroidRun,
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_and_help_are_the_run_settings(command):
    fields = {f.name: f for f in dataclasses.fields(COMMANDS[command])}
    params = [p for p in cli.commands[command].params if p.name in fields]
    assert len(params) == len([p for p in cli.commands[command].params if p.name not in ("help",)])
    for param in params:
        field = fields[param.name]
        default = field.default if field.metadata["choices"] is None or field.default is None else str(field.default)
        assert param.default == default, param.name
        assert param.help == field.metadata["help"], param.name


def test_model_defaults_have_one_source():
    run = CentroidRun()
    assert run.lam == DCN(3, (4, 4, 1), hidden=(4,)).lam
    assert run.gamma == IDEC(3, (4, 4, 1), hidden=(4,)).gamma
    model = LFSSModel((8, 8, 3), 2, width=0.0625, hidden=8, dim=4)
    assert (LFSSRun().delta, LFSSRun().tau, LFSSRun().lam) == (model.delta, model.tau, model.lam)


def test_dcn_lambda_agrees_in_class_cli_and_readme():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = float(re.search(r"λ = ([0-9.]+) for DCN's k-means term", readme).group(1))
    cli_default = next(p.default for p in cli.commands["dcn"].params if p.name == "lam")
    assert DCN(3, (4, 4, 1), hidden=(4,)).lam == cli_default == CentroidRun().lam == stated == 0.025


def test_per_command_options_appear_only_where_they_apply():
    names = {c: {p.name for p in cli.commands[c].params} for c in ("dec", "idec", "dcn")}
    assert "gamma" in names["idec"] and "gamma" not in names["dec"] | names["dcn"]
    assert "lam" in names["dcn"] and "lam" not in names["dec"] | names["idec"]
    assert "target_interval" in names["dec"] & names["idec"] and "target_interval" not in names["dcn"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (lambda: DECSRun(alpha=float("inf")), "alpha must be a finite number"),
        (lambda: DECSRun(lam=float("nan")), "lam must be a finite number"),
        (lambda: DECSRun(eval_every=0), "eval_every must be a positive whole number"),
        (lambda: LFSSRun(width=0), "width must be positive"),
        (lambda: LFSSRun(depth=19), "depth must be one of 18, 34, 50"),
        (lambda: CentroidRun(brb_alpha=1.5), r"brb_alpha must lie in \[0, 1\]"),
        (lambda: StabilityRun(share=0), r"share must lie in \(0, 1\)"),
        (lambda: StabilityRun(bins=1), "bins must be a whole number of at least 2"),
        (lambda: DECSRun(n_clusters=1), "n_clusters must be at least 2"),
    ],
)
def test_settings_refuse_nonsense(settings, message):
    with pytest.raises(DeepstabError, match=message):
        settings()
