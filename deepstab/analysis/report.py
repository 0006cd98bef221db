"""Files of a sample-stability report: CSV, JSON, pictures and a self-contained HTML page.

:func:`write_report` writes, into one folder,

- ``stability.csv``: sample index, label (if any), stability at each tracked epoch, final cluster;
- ``summary.json``: the three analyses of :func:`deepstab.analysis.measures.analyse`;
- with matplotlib (the ``plot`` extra): ``accuracy_by_stability.png``, ``recurrence.png``,
  ``unstable_samples.png``, ``stable_samples.png``;
- ``report.html``: the tables and the pictures inlined, loading nothing from elsewhere.

Every file is written to a temporary name and renamed, so an interrupted report never
leaves a half-written file behind.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepstab.analysis.measures import analyse
from deepstab.errors import DeepstabError
from deepstab.io import atomic_path

PICTURES = ("accuracy_by_stability.png", "recurrence.png", "unstable_samples.png", "stable_samples.png")


def write_stability_csv(path: Path, stability: np.ndarray, epochs: Sequence[int], y=None, clusters=None) -> Path:
    """``index[,label],epoch_<t>...[,cluster]`` rows, stabilities with 6 decimals."""
    s = np.asarray(stability, dtype=np.float32)
    header = ["index"] + (["label"] if y is not None else []) + [f"epoch_{e}" for e in epochs]
    header += ["cluster"] if clusters is not None else []
    with atomic_path(path) as partial, open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for i in range(s.shape[1]):
            row = [i] + ([int(y[i])] if y is not None else []) + [f"{v:.6f}" for v in s[:, i]]
            writer.writerow(row + ([int(clusters[i])] if clusters is not None else []))
    return path


def read_stability_csv(path: str | Path) -> dict:
    """Read ``stability.csv`` back: ``{"epochs", "stability" (epochs, N), "label", "cluster"}``."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:1] != ["index"]:
        raise DeepstabError(f"{path} is not a deepstab stability.csv (its first column must be 'index').")
    header, body = rows[0], np.array(rows[1:], dtype=object).reshape(len(rows) - 1, len(rows[0]))
    columns = {name: body[:, i] for i, name in enumerate(header)}
    epoch_names = [name for name in header if name.startswith("epoch_")]
    return {
        "epochs": [int(name[len("epoch_") :]) for name in epoch_names],
        "stability": np.array([columns[name].astype(np.float32) for name in epoch_names]),
        "label": columns["label"].astype(np.int64) if "label" in columns else None,
        "cluster": columns["cluster"].astype(np.int64) if "cluster" in columns else None,
    }


def _write_json(path: Path, data: dict) -> Path:
    with atomic_path(path) as partial:
        partial.write_text(json.dumps(data, indent=2))
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as partial:
        fig.savefig(partial, dpi=110, bbox_inches="tight")
    fig.clf()
    return path


def _plot_accuracy(plt, table: dict, path: Path) -> Path:
    measure, bins = table["measure"], table["bins"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar([b["bin"] + 1 for b in bins], [b[measure] for b in bins], color="#4878a8")
    ax.set_xlabel(f"stability bin (1 = least stable {100 // len(bins)}%)")
    ax.set_ylabel("share predicted correctly" if measure == "accuracy" else "mean confidence")
    ax.set_xticks([b["bin"] + 1 for b in bins])
    ax.set_ylim(0, 1)
    ax.set_title(f"{measure.capitalize()} by stability (Observation 1)")
    return _save(fig, path)


def _plot_recurrence(plt, table: dict, path: Path) -> Path:
    rows = table["rows"][1:]
    times = np.array([r["times"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(times - 0.2, [r["observed"] for r in rows], width=0.4, label="observed", color="#c44e52")
    ax.bar(times + 0.2, [r["random"] for r in rows], width=0.4, label="random selection", color="#999999")
    ax.set_xlabel(f"epochs (of {table['tracked_epochs']}) among the least stable {table['share']:.0%}")
    ax.set_ylabel("samples")
    ax.set_xticks(times)
    ax.legend()
    ax.set_title("Recurrence of unstable samples (Observation 2)")
    return _save(fig, path)


def _plot_grid(plt, x: np.ndarray, indices: list[int], times: list[int], y, title: str, path: Path) -> Path:
    columns = 8
    rows = max((len(indices) + columns - 1) // columns, 1)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.3 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i, t in zip(axes.flat, indices, times):
        image = np.clip(np.asarray(x[i], dtype=np.float32), 0, 1)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        elif image.ndim == 1:  # flattened input: a square if it is one, else a strip
            side = int(np.sqrt(image.size))
            image = image.reshape(side, side) if side * side == image.size else image[None, :]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(f"#{i}" + (f" y={int(y[i])}" if y is not None else "") + f"\n{t}x", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _write_html(path: Path, summary: dict, pictures: dict[str, Path]) -> Path:
    def image(name: str, alt: str) -> str:
        if name not in pictures:
            return "<p><em>(picture not drawn: install the plot extra, pip install deepstab[plot])</em></p>"
        data = base64.b64encode(pictures[name].read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>deepstab sample-stability report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;}table{border-collapse:collapse;}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right;}img{max-width:100%;}</style></head><body>",
        "<h1>Sample-stability report</h1>",
        f"<p>{summary['n_samples']} samples; stability tracked at epochs {summary['tracked_epochs']}. "
        + html.escape(summary.get("description", ""))
        + "</p>",
    ]
    table = summary.get("accuracy_by_stability")
    if table:
        measure = table["measure"]
        parts.append(
            f"<h2>Observation 1: {measure} by stability</h2>"
            + image("accuracy_by_stability.png", "accuracy by stability")
        )
        parts.append(
            _html_table(
                ["bin", "samples", "stability from", "to", measure],
                [
                    [
                        b["bin"] + 1,
                        b["count"],
                        f"{b['stability_min']:.6f}",
                        f"{b['stability_max']:.6f}",
                        f"{b[measure]:.3f}",
                    ]
                    for b in table["bins"]
                ],
            )
        )
    rec = summary["recurrence"]
    p = "n/a" if rec["p_value"] is None else ("< 1e-300" if rec["p_value"] == 0 else f"= {rec['p_value']:.3g}")
    parts.append(
        f"<h2>Observation 2: recurrence among the least stable {rec['share']:.0%}</h2>"
        + image("recurrence.png", "recurrence")
    )
    parts.append(
        _html_table(
            ["times", "observed", "random"], [[r["times"], r["observed"], f"{r['random']:.1f}"] for r in rec["rows"]]
        )
    )
    parts.append(
        f"<p>Counted over epochs {rec.get('epochs', '')}. Chi-square test against random selection: p {p}.</p>"
    )
    ext = summary["extreme_samples"]
    parts.append(
        "<h2>Observation 3: atypical and typical samples</h2>"
        f"<p>{ext['atypical_majority']} samples were among the least stable at more than half the tracked epochs; "
        f"{ext['typical_majority']} among the most stable. Under each image: its index, label, and at how many "
        "tracked epochs it was in that extreme.</p>"
        + image("unstable_samples.png", "least stable samples")
        + image("stable_samples.png", "most stable samples")
    )
    parts.append("</body></html>")
    with atomic_path(path) as partial:
        partial.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_report(
    output_dir: str | Path,
    x: np.ndarray,
    stability: np.ndarray,
    epochs: Sequence[int],
    y: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
    description: str = "",
    extra: dict | None = None,
    **options,
) -> dict:
    """Analyse a stability record and write the report files into ``output_dir``; return
    the summary (what ``summary.json`` holds). ``options`` go to
    :func:`deepstab.analysis.measures.analyse` (``bins``, ``share``, ``n_extreme``, ``recurrence_epochs``)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(epochs) == 0:
        raise DeepstabError(
            "No epoch was tracked, so there is nothing to report: train for at least --track-every epochs."
        )
    summary = analyse(stability, epochs, y=y, clusters=clusters, confidence=confidence, **options)
    summary["description"] = description
    summary.update(extra or {})
    write_stability_csv(out / "stability.csv", stability, epochs, y=y, clusters=clusters)
    pictures: dict[str, Path] = {}
    plt = _pyplot()
    if plt is not None:
        if "accuracy_by_stability" in summary:
            pictures[PICTURES[0]] = _plot_accuracy(plt, summary["accuracy_by_stability"], out / PICTURES[0])
        pictures[PICTURES[1]] = _plot_recurrence(plt, summary["recurrence"], out / PICTURES[1])
        ext = summary["extreme_samples"]
        pictures[PICTURES[2]] = _plot_grid(
            plt, x, ext["atypical"], ext["atypical_times"], y, "Least stable samples", out / PICTURES[2]
        )
        pictures[PICTURES[3]] = _plot_grid(
            plt, x, ext["typical"], ext["typical_times"], y, "Most stable samples", out / PICTURES[3]
        )
        plt.close("all")
    summary["files"] = ["stability.csv", "summary.json", *pictures, "report.html"]
    _write_json(out / "summary.json", summary)
    _write_html(out / "report.html", summary, pictures)
    return summary
