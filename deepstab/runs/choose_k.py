"""Choosing K for a saved model's embedding: what ``python cli.py choose-k`` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepstab import checks, datasets
from deepstab.analysis.k_choice import KChoice, choose_k, parse_k_range
from deepstab.io import check_output_file, existing_model_file
from deepstab.methods.lfss import LFSSModel
from deepstab.runs.predict import load_model_and_data


def run_choose_k(
    model_path: str,
    dataset: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    k_range: str | None = None,
    seed: int = 0,
    output: str | None = None,
) -> tuple[KChoice, Path | None]:
    """Score every K of ``k_range`` on the embedding of ``dataset`` by the saved model (LFSS's
    unit-normalised, as its cosine k-means sees it) and choose one
    (:func:`deepstab.analysis.k_choice.choose_k`); write the score-against-K plot to ``output``
    (default ``<model>-<dataset>-k.png``; ``None`` where matplotlib is missing). Labels are not read."""
    bounds = parse_k_range(k_range)
    seed = checks.non_negative_int("seed", seed)
    model_file = existing_model_file(model_path)
    path = Path(output) if output else model_file.with_name(f"{model_file.stem}-{datasets.slug(dataset)}-k.png")
    check_output_file(path, "The plot")
    model, x, _ = load_model_and_data(model_path, dataset, data_dir, image_size)
    z = np.asarray(model.embed(x), dtype=np.float64)
    if isinstance(model, LFSSModel):
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    choice = choose_k(z, bounds, seed=seed)
    return choice, choice.plot(path)
