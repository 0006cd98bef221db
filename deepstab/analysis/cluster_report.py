"""The cluster report: one self-contained HTML page that shows what each cluster holds.

:func:`write_cluster_report` writes, into one folder,

- ``index.html``: a summary (method, dataset, number of images, K, settings, the cluster sizes
  as a bar chart), a 2-D map of the embedding coloured by cluster with the cluster centres,
  ACC/NMI/ARI and the confusion matrix after the Hungarian matching where labels exist, and one
  section per cluster with its size and its most and least confident members, each captioned
  with its index or file name;
- ``cluster-<k>.jpg`` (colour images) or ``cluster-<k>.png`` (grey ones): one sprite per
  non-empty cluster holding the thumbnails of the members shown, which the page crops with CSS.

Invariants: the page loads nothing but those sprites (its charts are inline SVG, it has no
script), so it opens from disk with no server and no network, and needs no matplotlib. Its cost
is bounded whatever the number of images N: at most :data:`MAP_POINTS` points on the map and
at most ``2 * per_end`` thumbnails per cluster, ``per_end`` shrinking with K so that all
clusters together show about :data:`THUMBNAIL_BUDGET`. Every file goes through
:func:`deepstab.io.atomic_path`.
"""

from __future__ import annotations

import colorsys
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

import deepstab
from deepstab.analysis.k_choice import KChoice
from deepstab.errors import DeepstabError
from deepstab.io import atomic_path
from deepstab.metrics import evaluate

TILE = 64  # side of a thumbnail, in pixels, in the sprites and on the page
MAP_POINTS = 3000  # the map shows at most this many images
THUMBNAIL_BUDGET = 640  # thumbnails over all clusters, about
MAX_PER_END, MIN_PER_END = 16, 2  # most (least) confident members shown per cluster
MAX_CONFUSION_CELLS = 250 * 250  # a larger confusion matrix is summed up, not drawn

# Matplotlib's tab10, then tab20's lighter tones; beyond 20 clusters, hues spread evenly.
PALETTE = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    *("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"),
)


def colours(n: int) -> list[str]:
    """``n`` distinct colours as ``#rrggbb``: :data:`PALETTE` up to 20, else evenly spread hues."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    rgb = [
        colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65 + 0.3 * (i % 2), 0.85 - 0.25 * (i % 3 == 2)) for i in range(n)
    ]
    return ["#" + "".join(f"{round(c * 255):02x}" for c in triple) for triple in rgb]


def per_end(n_clusters: int) -> int:
    """How many most (and least) confident members each cluster shows: about
    :data:`THUMBNAIL_BUDGET` thumbnails in all, between :data:`MIN_PER_END` and :data:`MAX_PER_END`."""
    return int(np.clip(THUMBNAIL_BUDGET // (2 * n_clusters), MIN_PER_END, MAX_PER_END))


def unit(z: np.ndarray) -> np.ndarray:
    """Rows of ``z`` scaled to length 1 (zero rows stay zero)."""
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def cluster_means(z: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """The mean of ``z`` over each cluster's members (zeros for an empty cluster)."""
    sums = np.zeros((n_clusters, z.shape[1]), np.float64)
    np.add.at(sums, labels, z)
    return (sums / np.maximum(np.bincount(labels, minlength=n_clusters), 1)[:, None]).astype(np.float32)


def matched_confusion(y: np.ndarray, labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The confusion matrix of the labelled images (``y >= 0``) after the Hungarian matching
    that :func:`deepstab.metrics.cluster_accuracy` scores: ``(classes, table, columns)`` where
    ``table[i, j]`` counts the images of class ``classes[i]`` in cluster ``columns[j]``, and the
    cluster matched to class ``classes[i]`` is ``columns[i]`` (the unmatched ones follow, in order)."""
    keep = y >= 0
    classes, t = np.unique(y[keep], return_inverse=True)
    counts = np.zeros((len(classes), n_clusters), np.int64)
    np.add.at(counts, (t, labels[keep]), 1)
    rows, cols = linear_sum_assignment(-counts)
    matched = dict(zip(rows.tolist(), cols.tolist()))
    first = [matched[i] for i in range(len(classes)) if i in matched]
    columns = first + [k for k in range(n_clusters) if k not in set(first)]
    return classes, counts[:, columns], columns


def _map_sample(labels: np.ndarray, n_clusters: int, most: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``most`` indices: each cluster about its share, and at least ``min(20, most / 2K)``
    of it (all of a cluster that has fewer), so that small clusters stay visible."""
    if len(labels) <= most:
        return np.arange(len(labels))
    sizes = np.bincount(labels, minlength=n_clusters)
    floor = min(20, most // (2 * n_clusters))
    quota = np.minimum(sizes, np.floor(sizes * (most - floor * n_clusters) / len(labels)).astype(int) + floor)
    picked = [rng.choice(np.flatnonzero(labels == k), q, replace=False) for k, q in enumerate(quota) if q]
    return np.sort(np.concatenate(picked))


def _thumbnail(image: np.ndarray) -> Image.Image:
    """One image (H, W, 1 or 3; uint8, or float in [0, 1]) as a ``TILE`` x ``TILE`` thumbnail:
    scaled to fit (nearest neighbour when enlarged, so small images stay sharp), centred."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    picture = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    scale = TILE / max(picture.size)
    size = (max(round(picture.width * scale), 1), max(round(picture.height * scale), 1))
    picture = picture.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    tile = Image.new(picture.mode, (TILE, TILE), 255 if picture.mode == "L" else (255, 255, 255))
    tile.paste(picture, ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return tile


@dataclass
class _Shown:
    """The members of one cluster shown on the page, and where their thumbnails lie in its sprite."""

    most: list[int]
    least: list[int]
    positions: dict[int, tuple[int, int]]
    sprite: str


def _write_sprite(folder: Path, k: int, x, most: list[int], least: list[int], columns: int) -> _Shown:
    """The sprite of cluster ``k``: ``most`` on the first rows, ``least`` from the next row on."""
    rows_most = -(-len(most) // columns)
    rows = rows_most + -(-len(least) // columns)
    grey = x.shape[-1] == 1
    sheet = Image.new("L" if grey else "RGB", (columns * TILE, rows * TILE), 255 if grey else (255, 255, 255))
    positions = {}
    for start, members in ((0, most), (rows_most, least)):
        images = np.asarray(x[np.sort(members)]) if members else []
        by_index = dict(zip(np.sort(members).tolist(), images))
        for j, i in enumerate(members):
            place = ((j % columns) * TILE, (start + j // columns) * TILE)
            sheet.paste(_thumbnail(by_index[i]), place)
            positions[i] = place
    name = f"cluster-{k}.png" if grey else f"cluster-{k}.jpg"
    with atomic_path(folder / name) as partial:
        if grey:
            sheet.save(partial, format="PNG", optimize=True)
        else:
            sheet.save(partial, format="JPEG", quality=85)
    return _Shown(most, least, positions, name)


def _svg_bars(sizes: np.ndarray, palette: list[str]) -> str:
    """The cluster sizes as an SVG bar chart; each bar links to its cluster's section."""
    k, width, height, base = len(sizes), 560, 220, 190
    step = (width - 40) / k
    top = max(int(sizes.max()), 1)
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="cluster sizes">']
    parts.append(f'<line x1="34" y1="{base}" x2="{width}" y2="{base}" stroke="#999"/>')
    parts.append(f'<text x="30" y="16" text-anchor="end" class="axis">{top}</text>')
    parts.append(f'<text x="30" y="{base}" text-anchor="end" class="axis">0</text>')
    every = max(1, int(np.ceil(k / 30)))
    for c, n in enumerate(sizes.tolist()):
        h = (base - 12) * n / top
        x0 = 38 + c * step
        parts.append(
            f'<a href="#cluster-{c}"><rect x="{x0:.1f}" y="{base - h:.1f}" width="{max(step * 0.8, 1):.1f}" '
            f'height="{h:.1f}" fill="{palette[c]}"><title>cluster {c}: {n} images</title></rect></a>'
        )
        if c % every == 0:
            parts.append(
                f'<text x="{x0 + step * 0.4:.1f}" y="{base + 14}" text-anchor="middle" class="axis">{c}</text>'
            )
    parts.append(f'<text x="{width / 2}" y="{height - 2}" text-anchor="middle" class="axis">cluster</text></svg>')
    return "".join(parts)


def _svg_map(
    points: np.ndarray, point_labels: np.ndarray, centres: np.ndarray, present: np.ndarray, palette: list[str]
) -> str:
    """Points (2-D) coloured by cluster, and the centres of the ``present`` (non-empty) clusters
    as numbered rings, as an SVG scatter."""
    side, pad = 520, 18
    both = np.concatenate([points, centres[present]])
    low, high = both.min(axis=0), both.max(axis=0)
    scale = (side - 2 * pad) / max(float((high - low).max()), 1e-12)

    def place(p: np.ndarray) -> np.ndarray:
        q = (p - low) * scale + pad
        return np.stack([q[:, 0], side - q[:, 1]], axis=1)  # y up

    xy, cxy = place(points), place(centres)
    parts = [f'<svg viewBox="0 0 {side} {side}" class="chart map" role="img" aria-label="map of the embedding">']
    parts.append(f'<rect x="0" y="0" width="{side}" height="{side}" fill="#fafafa" stroke="#ddd"/>')
    for c in range(len(centres)):
        mine = xy[point_labels == c]
        if len(mine):
            dots = "".join(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2"/>' for a, b in mine)
            parts.append(f'<g fill="{palette[c]}" fill-opacity="0.65">{dots}</g>')
    for c in np.flatnonzero(present).tolist():
        a, b = cxy[c]
        parts.append(
            f'<a href="#cluster-{c}"><circle cx="{a:.1f}" cy="{b:.1f}" r="10" fill="#fff" stroke="{palette[c]}" '
            f'stroke-width="3"/><text x="{a:.1f}" y="{b + 4:.1f}" text-anchor="middle" class="centre">{c}</text></a>'
        )
    return "".join(parts) + "</svg>"


def _table(rows: Sequence[tuple[str, object]]) -> str:
    return (
        "<table class='kv'>"
        + "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>" for key, value in rows)
        + "</table>"
    )


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f4f5f7}
main{max-width:1200px;margin:0 auto;padding:16px 24px 40px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:18px;margin:0 0 8px}h3{font-size:13px;margin:10px 0 4px;color:#555}
.sub{color:#555;margin:0 0 14px}.card{background:#fff;border:1px solid #e2e4e8;border-radius:8px;padding:14px 16px;
margin:0 0 14px}.row{display:flex;gap:14px;flex-wrap:wrap}.row>.card{flex:1 1 440px;min-width:0}
table{border-collapse:collapse;font-size:13px}.kv th{text-align:left;font-weight:600;padding:2px 14px 2px 0;
vertical-align:top}.kv td{padding:2px 0}.chart{width:100%;height:auto}.map{max-width:520px}
.axis{font-size:11px;fill:#555}.centre{font-size:11px;font-weight:700;fill:#222}.note{font-size:12px;color:#666}
.metrics{font-size:22px;margin:4px 0 10px}.metrics b{margin-right:18px}.scroll{overflow:auto}
.cm td,.cm th{border:1px solid #ddd;padding:2px 6px;text-align:right;font-size:12px;min-width:26px}
.cm td.hit{outline:2px solid #333;outline-offset:-2px;font-weight:700}.cm th{background:#f0f1f3}
.tiles{display:flex;flex-wrap:wrap;gap:6px}.t{margin:0;width:64px}.t img{width:64px;height:64px;object-fit:none;
display:block;border-radius:3px}.t figcaption{font-size:10px;line-height:12px;color:#444;overflow:hidden;
white-space:nowrap;text-overflow:ellipsis}.t .off{color:#c0392b}.swatch{display:inline-block;width:12px;
height:12px;border-radius:3px;margin-right:6px;vertical-align:-1px}
"""


def write_cluster_report(
    folder: str | Path,
    x,
    labels: np.ndarray,
    embeddings: np.ndarray,
    n_clusters: int,
    *,
    confidence: np.ndarray | None = None,
    centres: np.ndarray | None = None,
    y: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    method: str = "",
    dataset: str = "",
    settings: dict | None = None,
    seed: int = 0,
    k_choice: KChoice | None = None,
    stability: np.ndarray | None = None,
) -> Path:
    """Write the cluster report of ``labels`` (in ``0..n_clusters-1``) of the images ``x`` (N,
    H, W, 1 or 3; uint8 or float in [0, 1], possibly memory-mapped: only the images shown are
    read) into ``folder``; return the path of its ``index.html``.

    ``embeddings`` (N, D) are what the clustering saw; ``confidence`` (N), each image's
    confidence in its cluster, orders the members; without it (LFSS: k-means gives none) the
    cosine similarity of each unit-normalised embedding to its cluster's mean one is used,
    and the page says so. ``centres`` (K, D), the model's centroids, are drawn on the map
    (default: the members' means). ``y`` (labels, ``-1`` for none) adds ACC/NMI/ARI and the
    confusion matrix; ``class_names[c]`` names class ``c``; ``names[i]`` names image ``i``
    (default ``#i``). ``settings`` are listed in the summary; ``seed`` draws the map's sample.
    ``k_choice``, where the run chose K itself, adds its score-against-K curve (``choose-k.png``).
    ``stability`` (N), where the run tracked it (each image's mean stability over the tracked
    epochs, :class:`~deepstab.analysis.tracker.SampleStabilityTracker`), picks each cluster's
    least stable members in place of its least confident ones."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    y = None if y is None else np.asarray(y).reshape(-1)
    z = np.asarray(embeddings, dtype=np.float32)
    n = len(labels)
    if getattr(x, "ndim", 0) != 4 or x.shape[-1] not in (1, 3):
        raise DeepstabError(f"The cluster report shows images (N, H, W, 1 or 3); got an array of shape {x.shape}.")
    if len(x) != n or len(z) != n or (confidence is not None and len(confidence) != n):
        raise ValueError("x, labels, embeddings and confidence must have one entry per image")
    if n == 0 or labels.min() < 0 or labels.max() >= n_clusters:
        raise ValueError(f"labels must lie in 0..{n_clusters - 1}")
    out = Path(folder)
    cosine = confidence is None
    own_centres = centres is not None and not cosine
    if cosine:
        z = unit(z)
        centres = unit(cluster_means(z, labels, n_clusters))
        confidence = np.einsum("ij,ij->i", z, centres[labels])
    elif centres is None:
        centres = cluster_means(z, labels, n_clusters)
    confidence = np.asarray(confidence, dtype=np.float64)
    sizes = np.bincount(labels, minlength=n_clusters)
    palette = colours(n_clusters)

    shown_per_end = per_end(n_clusters)
    shown: dict[int, _Shown] = {}
    for k in np.flatnonzero(sizes).tolist():
        members = np.flatnonzero(labels == k)
        order = members[np.argsort(-confidence[members], kind="stable")].tolist()
        half = min(shown_per_end, -(-len(order) // 2))
        rest = order[half:]
        if stability is not None:  # the least stable of the members not shown as most confident
            rest = sorted(rest, key=lambda i: (-stability[i], i))
        least = rest[::-1][:shown_per_end]
        shown[k] = _write_sprite(out, k, x, order[:half], least, shown_per_end)

    from sklearn.decomposition import PCA

    sample = _map_sample(labels, n_clusters, MAP_POINTS, np.random.default_rng(seed))
    pca = PCA(n_components=2, random_state=seed).fit(np.concatenate([z[sample], centres[sizes > 0]]))
    points, centre_points = pca.transform(z[sample]), pca.transform(centres)
    variance = pca.explained_variance_ratio_

    metrics, confusion = None, None
    if y is not None and (y >= 0).any():
        metrics = evaluate(y, labels)
        confusion = matched_confusion(y, labels, n_clusters)

    def class_name(c: int) -> str:
        return str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c)

    matched = {col: int(cls) for cls, col in zip(confusion[0], confusion[2])} if confusion else {}
    confidence_note = (
        "Confidence: the cosine similarity of an image's embedding to its cluster's mean embedding (both "
        "unit-normalised), since the clustering (cosine k-means) gives none."
        if cosine
        else "Confidence: the model's soft assignment of an image to its cluster (max<sub>j</sub> q<sub>ij</sub>)."
    )
    summary = [
        ("Method", method or "-"),
        ("Dataset", dataset or "-"),
        ("Images", f"{n:,}"),
        ("Clusters (K)", f"{n_clusters} ({int((sizes > 0).sum())} non-empty)"),
        ("Largest / smallest", f"{sizes.max():,} / {sizes.min():,} images"),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(method)} clusters of {html.escape(dataset)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(method)} clusters of {html.escape(dataset)}</h1>",
        f"<p class='sub'>{n:,} images in {n_clusters} clusters. Written by deepstab {deepstab.__version__}.</p>",
        "<div class='row'><section class='card' id='summary'><h2>Summary</h2>" + _table(summary),
    ]
    if settings:
        parts.append("<h3>Settings</h3>" + _table([(k, v) for k, v in settings.items() if v is not None]))
    parts.append("</section>")
    parts.append(
        "<section class='card' id='sizes'><h2>Cluster sizes</h2>"
        + _svg_bars(sizes, palette)
        + "<p class='note'>Click a bar to see its cluster.</p></section></div>"
    )
    parts.append(
        "<div class='row'><section class='card' id='map'><h2>Map of the embedding</h2>"
        + _svg_map(points, labels[sample], centre_points, sizes > 0, palette)
        + f"<p class='note'>PCA of the {'unit-normalised ' if cosine else ''}embeddings of {len(sample):,} images "
        + (f"(a sample of the {n:,}: each cluster about its share, small ones topped up)" if len(sample) < n else "")
        + " and of the cluster centres"
        + f"; the axes explain {variance[0]:.0%} and {variance[1]:.0%} of their "
        + f"variance. Rings: the cluster {'centroids' if own_centres else 'means'}, numbered.</p>"
        + "</section>"
    )
    if metrics is not None:
        classes, table, columns = confusion
        labelled = int((y >= 0).sum())
        head = "".join(f"<th style='color:{palette[c]}'>{c}</th>" for c in columns)
        body = []
        for i, row in enumerate(table):
            total = max(int(row.sum()), 1)
            cells = "".join(
                f"<td{' class=hit' if j == i else ''} style='background:rgba(31,119,180,{0.85 * v / total:.2f});"
                f"color:{'#fff' if v / total > 0.55 else '#222'}'>{v}</td>"
                for j, v in enumerate(row.tolist())
            )
            body.append(f"<tr><th>{html.escape(class_name(int(classes[i])))}</th>{cells}</tr>")
        matrix = (
            f"<div class='scroll'><table class='cm' id='confusion'><tr><th>class \\ cluster</th>{head}</tr>"
            + "".join(body)
            + "</table></div><p class='note'>Rows: the classes; columns: the clusters, each matched to a class by "
            + "the Hungarian matching of ACC (outlined), then the unmatched ones. Shade: share of the row."
            if table.size <= MAX_CONFUSION_CELLS
            else f"<p class='note'>The confusion matrix ({len(classes)} classes by {n_clusters} clusters) is too large "
            "to draw; each cluster's section names the class it is matched to."
        )
        parts.append(
            "<section class='card' id='metrics'><h2>Against the labels</h2><p class='metrics'>"
            + "".join(f"<b>{key.upper()} {value:.3f}</b>" for key, value in metrics.items())
            + "</p>"
            + matrix
            + (f" {n - labelled:,} unlabelled images are left out." if labelled < n else "")
            + "</p></section>"
        )
    if k_choice is not None:
        plotted = k_choice.plot(out / "choose-k.png")
        parts.append(
            "<section class='card' id='choose-k'><h2>How K was chosen</h2>"
            + ("<img src='choose-k.png' alt='score against K' style='max-width:100%'>" if plotted else "")
            + f"<p class='note'>Without labels (--n-clusters auto): {html.escape(k_choice.describe())}.</p></section>"
        )
    parts.append("</div>")

    def tile(i: int, sprite: _Shown, k: int) -> str:
        name = names[i] if names is not None else f"#{i}"
        short = name.rsplit("/", 1)[-1]
        left, top = sprite.positions[i]
        info = f"{name} (index {i}), confidence {confidence[i]:.3f}"
        second = f"{confidence[i]:.2f}"
        if stability is not None:
            info += f", stability {stability[i]:.3f}"
        if y is not None and y[i] >= 0:
            info += f", label {class_name(int(y[i]))}"
            off = k in matched and matched[k] != int(y[i])
            second = f"<span class='{'off' if off else ''}'>{html.escape(class_name(int(y[i])))}</span> {second}"
        return (
            f"<figure class='t'><img src='{sprite.sprite}' alt='{html.escape(name)}' title='{html.escape(info)}' "
            f"style='object-position:-{left}px -{top}px'><figcaption>{html.escape(short)}<br>{second}</figcaption>"
            "</figure>"
        )

    parts.append(
        f"<p class='note'>{confidence_note} Each cluster shows its {shown_per_end} most confident and "
        f"{shown_per_end} least {'stable' if stability is not None else 'confident'} members (all of them when it has "
        "fewer), captioned with their file name or index"
        + (", true label (red: not the class the cluster is matched to)" if metrics is not None else "")
        + " and confidence"
        + (
            "; the least stable ones are those whose embedding moved most between the tracked epochs (their mean "
            "stability is in each image's tooltip)"
            if stability is not None
            else ""
        )
        + ".</p>"
    )
    for k in range(n_clusters):
        share = sizes[k] / n
        swatch = f"<span class='swatch' style='background:{palette[k]}'></span>"
        title = f"{swatch}Cluster {k}: {sizes[k]:,} images ({share:.1%})"
        if k in matched:
            members = labels == k
            agree = float((y[members] == matched[k]).sum() / max(int((y[members] >= 0).sum()), 1))
            matched_name = html.escape(class_name(matched[k]))
            title += f" &middot; matched to class {matched_name}: {agree:.0%} of its labelled images"
        parts.append(f"<section class='card cluster' id='cluster-{k}'><h2>{title}</h2>")
        if k not in shown:
            parts.append("<p class='note'>Empty: no image was put in this cluster.</p></section>")
            continue
        s = shown[k]
        mean = float(confidence[labels == k].mean())
        parts.append(f"<p class='note'>Mean confidence {mean:.3f}.</p>")
        parts.append("<h3>Most confident</h3><div class='tiles'>" + "".join(tile(i, s, k) for i in s.most) + "</div>")
        if s.least:
            heading = "Least stable (tracked over training)" if stability is not None else "Least confident"
            parts.append(f"<h3>{heading}</h3><div class='tiles'>" + "".join(tile(i, s, k) for i in s.least) + "</div>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    page = out / "index.html"
    with atomic_path(page) as partial:
        partial.write_text("\n".join(parts), encoding="utf-8")
    return page
