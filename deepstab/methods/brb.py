"""BRB: breaking the reclustering barrier (Miklautz et al., ICLR 2025).

Centroid-based deep clustering stops changing its clusters after a few epochs: the
embedding has been pulled so tightly around the centroids that no sample moves (the
"reclustering barrier"). BRB, every T epochs (§3, Algorithm 1, and the authors' code):

1. soft-resets the encoder: every Dense/Conv weight ``θ ← α θ + (1 - α) φ`` with ``φ`` drawn
   as the authors' code draws it (kernels from Kaiming-uniform ``U(±sqrt(6 / fan_in))``, biases
   from ``U(±1 / sqrt(fan_in))``); the embedding layer and batch normalisation are left alone
   unless asked;
2. re-clusters: k-means (10 restarts) on the embeddings of a subsample (the first 10,000
   training images, as the authors) replaces every centroid;
3. zeroes the optimizer's moment estimates of the centroids (not its step count), so that stale
   momentum does not drag the new centroids back.

:class:`BRB` is a Keras callback for :class:`~deepstab.methods.dec.DEC`, :class:`~deepstab.methods.dec.IDEC`,
:class:`~deepstab.methods.dec.DCN` and :class:`~deepstab.methods.decs.DECS` (anything with ``encoder``,
``embed``, ``set_centroids``, ``centroid_variables`` and ``n_clusters``).
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np

from deepstab import checks, seeding
from deepstab.errors import DeepstabError
from deepstab.nn.kmeans import kmeans

RESET_DRAWS = ("kaiming", "layer")
SUBSAMPLES = ("first", "random")


def _initializer_draw(initializer, shape, seed: int | None):
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = seed
    return initializer.__class__.from_config(config)(shape)


def reset_pairs(layer: keras.layers.Layer, draws: str) -> list[tuple]:
    """``(weight, initializer of φ)`` for the kernel (and bias) of a Dense/Conv ``layer``.
    ``"kaiming"``: the BRB authors' draws, ``torch.nn.init.kaiming_uniform_`` for the kernel
    (``U(±sqrt(6 / fan_in))``) and ``U(±1 / sqrt(fan_in))`` for the bias; ``"layer"``: the
    layer's own initializers."""
    weights = [layer.kernel] + ([layer.bias] if getattr(layer, "bias", None) is not None else [])
    if draws == "layer":
        return list(zip(weights, [layer.kernel_initializer, layer.bias_initializer]))
    bound = 1.0 / math.sqrt(math.prod(layer.kernel.shape[:-1]))  # Keras kernels are (..., in, out)
    return list(zip(weights, [keras.initializers.HeUniform(), keras.initializers.RandomUniform(-bound, bound)]))


def soft_reset(
    model: keras.Model,
    alpha: float,
    reset_embedding: bool = False,
    reset_batchnorm: bool = False,
    seed: int | None = None,
    draws: str = "kaiming",
) -> list[str]:
    """BRB's soft reset of ``model`` in place: ``θ ← α θ + (1 - α) φ`` for the kernel and bias
    of every Dense/Conv layer, ``φ`` drawn as :func:`fresh_draws` says. The layer named
    ``embedding`` is skipped unless ``reset_embedding``; BatchNorm's scale and offset move towards
    1 and 0 only with ``reset_batchnorm``. Returns the names of the reset layers.

    ``alpha = 1`` changes nothing; ``alpha = 0`` is a full re-initialisation.
    """
    checks.in_range("The soft-reset factor alpha", alpha, 0.0, 1.0)
    checks.choice("draws", draws, RESET_DRAWS)
    rng = np.random.default_rng(seed)
    reset = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            if not reset_batchnorm:
                continue
            pairs = [
                (w, keras.initializers.Ones() if w is layer.gamma else keras.initializers.Zeros())
                for w in (layer.gamma, layer.beta)
                if w is not None
            ]
        elif hasattr(layer, "kernel_initializer") and getattr(layer, "kernel", None) is not None:
            if layer.name == "embedding" and not reset_embedding:
                continue
            pairs = reset_pairs(layer, draws)
        else:
            continue
        for weight, initializer in pairs:
            fresh = _initializer_draw(initializer, tuple(weight.shape), int(rng.integers(2**31)))
            weight.assign(alpha * weight.value + (1.0 - alpha) * keras.ops.convert_to_tensor(fresh, dtype=weight.dtype))
        reset.append(layer.name)
    return reset


def zero_optimizer_moments(optimizer: keras.optimizers.Optimizer, variables: list) -> int:
    """Zero every optimizer slot (Adam's first and second moments, SGD's momentum) of
    ``variables``; returns how many slots were zeroed."""
    if not variables or not optimizer.built:
        return 0
    prefixes = tuple(v.path.replace("/", "_") + "_" for v in variables)
    zeroed = 0
    for slot in optimizer.variables:
        if slot.name.startswith(prefixes):  # Keras names a slot "<variable path>_<slot>"
            slot.assign(keras.ops.zeros(slot.shape, dtype=slot.dtype))
            zeroed += 1
    return zeroed


class BRB(keras.callbacks.Callback):
    """Soft reset and re-clustering every ``interval`` epochs (at the start of epochs
    ``interval``, ``2 interval``, ...; never after the last epoch, so the final model is a
    trained one). The epochs (0-based) are kept in ``reset_epochs`` and marked ``brb = 1``
    in the logs; ``seconds`` is the time spent in the interventions. A run resumed from a
    checkpoint (``fit`` with ``initial_epoch``) with a new BRB of the same seed records the
    earlier interventions and makes the later ones draw what an uninterrupted run draws.

    Args:
        x: the training images (the subsample for k-means is drawn from them).
        interval: T, epochs between interventions (20).
        alpha: soft-reset factor α (0.8).
        subsample: images embedded for the k-means re-clustering (10,000).
        reset: do the soft reset (``False``: recluster-only ablation).
        recluster: do the re-clustering and moment reset (``False``: reset-only ablation).
        reset_embedding, reset_batchnorm: include those layers in the soft reset.
        n_init: k-means restarts of the re-clustering.
        draws: how the soft reset draws ``φ``: ``"kaiming"`` (the authors') or ``"layer"`` (each
            layer's own initializers), see :func:`reset_pairs`.
        subsample_order: ``"first"`` (the first ``subsample`` training images every time, the
            authors') or ``"random"`` (a fresh random subsample every time).
        seed: seed of the fresh weights, of the random subsample and of k-means; ``None`` takes
            the trained model's BRB stream (:mod:`deepstab.seeding`).
    """

    def __init__(
        self,
        x: np.ndarray,
        interval: int = 20,
        alpha: float = 0.8,
        subsample: int = 10000,
        reset: bool = True,
        recluster: bool = True,
        reset_embedding: bool = False,
        reset_batchnorm: bool = False,
        n_init: int = 10,
        draws: str = "kaiming",
        subsample_order: str = "first",
        seed: int | None = None,
    ):
        super().__init__()
        if not (reset or recluster):
            raise DeepstabError("BRB with neither the soft reset nor the re-clustering does nothing: enable one.")
        self.x = x
        self.interval = checks.positive_int("The BRB interval", interval)
        self.alpha = checks.fraction("The BRB soft-reset factor alpha", alpha)
        self.subsample = checks.positive_int("The BRB subsample", subsample)
        self.reset, self.recluster = bool(reset), bool(recluster)
        self.reset_embedding, self.reset_batchnorm = bool(reset_embedding), bool(reset_batchnorm)
        self.n_init = checks.positive_int("n_init", n_init)
        self.draws = checks.choice("draws", draws, RESET_DRAWS)
        self.subsample_order = checks.choice("subsample_order", subsample_order, SUBSAMPLES)
        self.rng = None if seed is None else np.random.default_rng(seed)
        self.reset_epochs: list[int] = []
        self.seconds = 0.0
        self._first_epoch_seen = False

    def _draws(self) -> tuple[int | None, np.ndarray | None, int | None]:
        """One intervention's random choices, drawn in this order from the callback's stream:
        the seed of the fresh weights, the subsample, the seed of k-means."""
        reset_seed = int(self.rng.integers(2**31)) if self.reset else None
        index = kmeans_seed = None
        if self.recluster:
            size = min(self.subsample, len(self.x))
            if self.subsample_order == "first":
                index = np.arange(size)
            else:
                index = np.sort(self.rng.choice(len(self.x), size, replace=False))
            kmeans_seed = int(self.rng.integers(2**31))
        return reset_seed, index, kmeans_seed

    def on_train_begin(self, logs=None):
        self._first_epoch_seen = False
        if self.rng is None:
            self.rng = seeding.stream(self.model.seed, "brb")

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch_seen:
            self._first_epoch_seen = True
            self._catch_up(epoch)
        if epoch == 0 or epoch % self.interval:
            return
        start = time.perf_counter()
        model = self.model
        reset_seed, index, kmeans_seed = self._draws()
        if self.reset:
            soft_reset(model.encoder, self.alpha, self.reset_embedding, self.reset_batchnorm, reset_seed, self.draws)
        if self.recluster:
            if len(index) < model.n_clusters:
                raise DeepstabError(
                    f"The BRB subsample of {len(index)} images is smaller than the {model.n_clusters} clusters."
                )
            centres, _ = kmeans(model.embed(self.x[index]), model.n_clusters, n_init=self.n_init, seed=kmeans_seed)
            model.set_centroids(centres)
            zero_optimizer_moments(model.optimizer, model.centroid_variables)
        if hasattr(model, "on_recluster"):
            model.on_recluster()
        self.reset_epochs.append(epoch)
        self.seconds += time.perf_counter() - start

    def _catch_up(self, epoch: int) -> None:
        """A resumed run starts at a later epoch with a new callback: the
        interventions before it happened in the interrupted run. Record them, and draw their
        random choices again (without acting on them) so that later interventions draw what an
        uninterrupted run would."""
        for missed in range(self.interval, epoch, self.interval):
            if missed not in self.reset_epochs:
                self._draws()
                self.reset_epochs.append(missed)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["brb"] = 1.0 if self.reset_epochs and self.reset_epochs[-1] == epoch else 0.0
