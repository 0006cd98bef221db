"""LFSS: learning from sample stability for deep clustering (Li et al., ICML 2025), as the
authors' code computes it where the paper leaves a choice.

A BYOL-style network (§3.2, Algorithm 1): the online encoder ``f_o`` (ResNet backbone and
projector MLP) and predictor ``h`` are trained; the target ``f_t`` is their exponential moving
average (over the trainable weights; its batch normalisation keeps its own moving statistics);
the predecessor ``f_p`` is the target as it was at the end of the previous epoch. Per step, on
two SimCLR views ``x^1, x^2`` of a batch:

- ``L_S`` (Eq. 9): ``2 - 2 cos(f_t(x^2), h(f_o(x^1) + σξ))``, averaged over the two directions;
- ``L_I`` (Eq. 4): each online embedding ``f_o(x_i)`` against the predecessor's of the same view:
  positive ``f_p(x_i)``, negatives ``f_p(x_j)`` of the other samples, the positive left out of
  the denominator (:func:`~deepstab.methods.losses.nt_xent_self`), averaged over the views;
- ``L_C`` (Eqs. 5-8), after the warm-up of ``eta`` epochs: NT-Xent between the cluster centres
  (means of raw embeddings, normalised) of the online embeddings of one view and the target's of
  the other, over the samples of the batch that are not among the ``delta`` least stable
  (stability ``cos(f_t(x), f_p(x))``, one epoch apart, as the paper defines it), with the
  clusters from k-means on the target embeddings, refreshed every epoch;
- total (Eq. 10): ``L_S + λ (L_I + L_C)``.

Target and predecessor run in training mode in a step (batch statistics), as in the authors'
code. ``base="simclr"`` and ``base="moco"`` replace ``L_S`` by their own loss (Table 6; the
SimCLR variant has no EMA target: its target is the online network itself, without gradient);
``stability=False`` switches ``L_I`` and ``L_C`` off.

Under ``torchrun`` (:mod:`deepstab.distributed`) N processes train one model on a global batch
of N times ``batch_size``: ``L_S`` (and MoCo's InfoNCE) on each rank's own images, weighted by
its share of the global batch; ``L_I``, ``L_C`` and SimCLR's NT-Xent on the embeddings gathered
from all ranks, so that their negatives and cluster centres are the global batch's; the mean
gradient applied everywhere. Batch statistics are per rank unless ``sync_batch_norm``; the
moving statistics are averaged over the ranks at each epoch end, and the pseudo-labels are
computed once from the embeddings of all samples, so every rank holds the same model.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import torch
from keras import ops

from deepstab import allocator, checks, distributed, seeding
from deepstab.analysis.k_choice import choose_k, parse_k_range
from deepstab.analysis.measures import cosine_stability
from deepstab.datasets.store import to_unit_float
from deepstab.datasets.streaming import IndexedImages, indexed_batches
from deepstab.errors import DeepstabError
from deepstab.methods.lfss_callbacks import LFSSEpochEnd, RankSync
from deepstab.methods.losses import byol_loss, cluster_loss, info_nce, nt_xent, nt_xent_self
from deepstab.metrics import evaluate
from deepstab.nn.augment import SimCLRAugment
from deepstab.nn.constants import like
from deepstab.nn.kmeans import cosine_kmeans
from deepstab.nn.layers import FusedBatchNormalization
from deepstab.nn.networks import RESNETS, build_mlp, build_resnet
from deepstab.nn.optimizers import SGD
from deepstab.nn.steps import apply_gradients, graph_call, images_of
from deepstab.precision import exact

BASES = ("byol", "simclr", "moco")
# The k-means seeds of the authors' evaluation (random.seed(42), ten draws).
EVALUATION_SEEDS = (1824, 409, 4506, 4012, 3657, 2286, 1679, 8935, 1424, 9674)


@keras.saving.register_keras_serializable(package="deepstab")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """The LFSS authors' learning rate per iteration (their ``adjust_learning_rate``): with
    ``e = (step + 1) / steps_per_epoch + 1``, ``lr = base e / warmup`` while ``e < warmup``, then
    ``min + ½ (base - min)(1 + cos(π (e - warmup) / epochs))`` with ``min = min_ratio · base``
    (their code divides by ``epochs``, not ``epochs - warmup``, so the floor is never reached).

    Example:

    >>> schedule = WarmupCosine(0.05, steps_per_epoch=10, epochs=100)
    >>> [round(float(schedule(s)), 4) for s in (0, 89, 999)]
    [0.0055, 0.05, 0.0255]
    """

    def __init__(self, base: float, steps_per_epoch: int, epochs: int, warmup: int = 10, min_ratio: float = 0.5):
        super().__init__()
        self.base, self.steps_per_epoch, self.epochs = float(base), max(int(steps_per_epoch), 1), max(int(epochs), 1)
        self.warmup, self.min_ratio = int(warmup), float(min_ratio)

    def __call__(self, step):
        e = (ops.cast(step, "float32") + 1.0) / self.steps_per_epoch + 1.0
        low = self.min_ratio * self.base
        cosine = low + 0.5 * (self.base - low) * (1.0 + ops.cos((e - self.warmup) * math.pi / self.epochs))
        return ops.where(e < self.warmup, self.base * e / max(self.warmup, 1), cosine)

    def get_config(self):
        return {
            "base": self.base,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "warmup": self.warmup,
            "min_ratio": self.min_ratio,
        }


def lfss_optimizer(lr: float = 0.05, steps_per_epoch: int = 1, epochs: int = 1000) -> keras.optimizers.Optimizer:
    """SGD with momentum 0.9 and the authors' learning rate (:class:`WarmupCosine`, LFSS §4.1);
    weight decay is added to the gradients by :class:`LFSSModel` (as PyTorch's SGD does)."""
    return SGD(WarmupCosine(lr, steps_per_epoch, epochs), momentum=0.9)


@keras.saving.register_keras_serializable(package="deepstab")
class LFSSModel(keras.Model):
    """LFSS (ICML 2025) as a ``keras.Model``: ``compile()``, then ``fit(x, epochs=...)``.

    Args:
        input_shape: (H, W, C) of the images (NHWC floats in [0, 1]).
        n_clusters: K, for the k-means pseudo-labels and :meth:`predict_labels`; ``None``
            chooses it without labels from the target embeddings where it is first needed (the
            end of the warm-up, else the end of training; :mod:`deepstab.analysis.k_choice`).
        k_range: the candidates of that choice, ``"LOW:HIGH"`` (default ``K_RANGE``).
        k_choice: how K was chosen, once it was (kept for the cluster report).
        depth: ResNet depth, 18, 34 or 50.
        width: channel multiplier of the ResNet (1.0 is the standard network).
        hidden, dim: hidden size and output size of projector and predictor (4096, 256).
        base: ``"byol"`` (LFSS proper), ``"simclr"`` or ``"moco"`` (Table 6).
        stability: add ``L_I`` and ``L_C``; ``False`` gives the plain base method.
        eta: warm-up epochs before ``L_C`` (η).
        sigma: noise on the online projection before the predictor (σ, Eq. 9).
        delta: share of least stable samples left out of ``L_C`` (δ).
        lam: weight λ of ``L_I + L_C`` (Eq. 10).
        tau: temperature τ of L_I, L_C and the SimCLR variant (0.5).
        moco_tau: temperature of the MoCo variant's InfoNCE (MoCo's 0.2).
        momentum: EMA momentum of the target.
        weight_decay: L2 weight decay added to the gradients.
        predictor_lr_scale: learning-rate multiplier of the predictor (10, as the authors).
        mean, std: per-channel normalisation applied after augmentation.
        queue_size: MoCo's queue of negatives.
        seed: seed of the batch order, the augmentation and the noise; ``None`` draws one from
            NumPy's global generator (:func:`~deepstab.seeding.model_seed`).
        sync_batch_norm: under torchrun, normalise with the global batch's statistics
            (:class:`~deepstab.nn.layers.FusedBatchNormalization`'s ``sync``); otherwise each
            process uses its own batch's, as ``DistributedDataParallel`` does.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 16, 16, 3), dtype="float32")
    >>> model = LFSSModel((16, 16, 3), n_clusters=2, width=0.0625, hidden=16, dim=8, eta=1)
    >>> model.compile()
    >>> _ = model.fit(x, epochs=2, batch_size=16, verbose=0)
    >>> model.embed(x).shape, model.cluster_active
    ((32, 8), True)
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        n_clusters: int | None,
        depth: int = 18,
        width: float = 1.0,
        hidden: int = 4096,
        dim: int = 256,
        base: str = "byol",
        stability: bool = True,
        eta: int = 200,
        sigma: float = 0.001,
        delta: float = 0.1,
        lam: float = 0.1,
        tau: float = 0.5,
        moco_tau: float = 0.2,
        momentum: float = 0.996,
        weight_decay: float = 5e-4,
        predictor_lr_scale: float = 10.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        queue_size: int = 4096,
        seed: int | None = None,
        sync_batch_norm: bool = False,
        k_range: str | None = None,
        k_choice: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.k_range, self.k_choice = parse_k_range(k_range), k_choice
        checks.choice("base", base, BASES)
        checks.choice("depth", depth, tuple(RESNETS))
        n_clusters = None if n_clusters is None else checks.n_clusters("n_clusters", n_clusters)
        checks.in_range("delta (the share of unstable samples left out)", delta, 0.0, 1.0, high_open=True)
        checks.in_range("momentum", momentum, 0.0, 1.0)
        checks.non_negative_int("eta", eta)
        checks.positive("tau", tau)
        checks.positive("moco_tau", moco_tau)
        checks.non_negative("sigma", sigma)
        checks.non_negative("lam", lam)
        checks.non_negative("weight_decay", weight_decay)
        checks.positive_int("hidden", hidden)
        checks.positive_int("dim", dim)
        self.image_shape = tuple(int(s) for s in input_shape)
        channels = self.image_shape[-1]
        self.n_clusters, self.depth, self.width, self.hidden, self.dim = (
            n_clusters,
            int(depth),
            float(width),
            int(hidden),
            int(dim),
        )
        self.base, self.use_stability, self.eta = base, bool(stability), int(eta)
        self.sigma, self.delta, self.lam, self.tau = float(sigma), float(delta), float(lam), float(tau)
        self.moco_tau = float(moco_tau)
        self.momentum, self.weight_decay, self.predictor_lr_scale = (
            float(momentum),
            float(weight_decay),
            float(predictor_lr_scale),
        )
        self.mean = tuple(float(m) for m in (mean if mean is not None else [0.5] * channels))
        self.std = tuple(float(s) for s in (std if std is not None else [0.25] * channels))
        if len(self.mean) != channels or len(self.std) != channels:
            raise DeepstabError(
                f"mean and std need one value per channel ({channels}), got {self.mean} and {self.std}."
            )
        seed = seeding.model_seed(seed)
        self.queue_size, self.seed, self.sync_batch_norm = int(queue_size), seed, bool(sync_batch_norm)

        self.augment = SimCLRAugment(seed=seed)
        self.online = self._encoder("online")
        self.target = self._encoder("target")
        self.predecessor = self._encoder("predecessor")
        # Both run in training mode in a step, as in the authors' code: the target's batch
        # normalisation keeps its own moving statistics; the predecessor keeps those it was
        # copied with, which the stability measure uses.
        for frozen, mode in ((self.target, "track"), (self.predecessor, "batch")):
            frozen.trainable = False
            for layer in _batch_norms(frozen):
                layer.frozen_mode = mode
        self.predictor = (
            build_mlp(self.dim, self.hidden, self.dim, name="predictor", init="predictor") if base == "byol" else None
        )
        for network in (self.online, self.target, self.predecessor, self.predictor):
            for layer in _batch_norms(network) if network is not None else []:
                layer.sync = self.sync_batch_norm
        if base == "moco":
            self.queue = self.add_weight(
                shape=(self.queue_size, self.dim), initializer="random_normal", trainable=False, name="queue"
            )
            self.queue_pointer = self.add_weight(
                shape=(), initializer="zeros", dtype="int64", trainable=False, name="queue_pointer"
            )
        self.noise_seed = keras.random.SeedGenerator(seed)  # σξ of Eq. 9; its state is checkpointed
        self.copy_online_to_target()
        self.copy_target_to_predecessor()
        # Per-sample state of L_C, set by LFSSEpochEnd after the warm-up (kept in checkpoints).
        self.pseudo_labels: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None
        self._predictor_ids = {id(v) for v in (self.predictor.trainable_weights if self.predictor else [])}
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "l_s", "l_i", "l_c")}
        self.built = True

    # ---------------------------------------------------------------- networks

    def _encoder(self, name: str) -> keras.Model:
        backbone = build_resnet(self.image_shape, self.depth, self.width, name=f"{name}_backbone")
        projector = build_mlp(backbone.output_shape[-1], self.hidden, self.dim, name=f"{name}_projector")
        inputs = keras.Input(self.image_shape)
        return keras.Model(inputs, projector(backbone(inputs)), name=name)

    def normalise(self, x):
        return (x - like(self.mean, x)) / like(self.std, x)

    def call(self, x, training=False):
        """Target embeddings ``f_t(x)`` of un-augmented images."""
        return self.target(self.normalise(ops.convert_to_tensor(x)), training=False)

    def copy_online_to_target(self) -> None:
        _copy_weights(self.online, self.target)

    def copy_target_to_predecessor(self) -> None:
        """``f_p ← f_t``: done at the end of every epoch (LFSS §3.2)."""
        _copy_weights(self.target, self.predecessor)

    @property
    def ema_momentum(self) -> float:
        """The target's EMA momentum: ``momentum``, or 0 for the SimCLR variant, which has no
        target network (its "target" is then the online network itself, without gradient)."""
        return 0.0 if self.base == "simclr" else self.momentum

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA: ``θ_t ← m θ_t + (1 - m) θ_o`` for every trainable weight of the online network
        (the authors' code averages parameters; the target's batch normalisation keeps its own
        moving statistics)."""
        pairs = [(t.value, o.value) for t, o in zip(self.target.weights, self.online.weights) if o.trainable]
        torch._foreach_lerp_([t for t, _ in pairs], [o for _, o in pairs], 1.0 - self.ema_momentum)

    # ------------------------------------------------------------------- fit

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    @property
    def cluster_active(self) -> bool:
        """Whether ``L_C`` is on (pseudo-labels exist, after the warm-up)."""
        return self.use_stability and self.pseudo_labels is not None

    def compile(self, optimizer=None, lr: float = 0.05, **kwargs):
        """Compile; without ``optimizer``, :meth:`fit` builds the authors' SGD (:func:`lfss_optimizer`,
        base ``lr`` 0.05, LFSS §4.1) for its own number of epochs and steps."""
        self._default_lr = float(lr)
        self._needs_optimizer = optimizer is None
        super().compile(optimizer=optimizer or lfss_optimizer(lr), **kwargs)

    def get_compile_config(self):
        return {"lr": getattr(self, "_default_lr", 0.05)}

    def compile_from_config(self, config):
        self.compile(lr=config.get("lr", 0.05))
        self.optimizer.build(self.trainable_variables_of_step())  # so the saved optimizer state loads

    def fit(
        self,
        x=None,
        y=None,
        batch_size: int = 256,
        epochs: int = 1,
        callbacks=None,
        shuffle: bool = True,
        **kwargs,
    ):
        """``keras.Model.fit`` on an image array (or an :class:`IndexedImages`), with the
        epoch-end work of LFSS (predecessor copy, k-means, stability) as the first callback
        (a :class:`~deepstab.checkpoint.Checkpoint` after it makes the run resumable). Sets
        glibc's allocator for training first (:func:`deepstab.allocator.keep_large_blocks`)."""
        allocator.keep_large_blocks()
        distributed.setup()
        data = indexed_batches(
            x, self.image_shape, self.n_clusters or 2, batch_size, shuffle, self.seed, "LFSSModel.fit"
        )
        if isinstance(data, IndexedImages):
            data.epoch = int(kwargs.get("initial_epoch", 0))  # the order of a resumed epoch
        if getattr(self, "_needs_optimizer", False):
            lr = self._default_lr * distributed.world_size()  # the linear scaling rule for the global batch
            super().compile(optimizer=lfss_optimizer(lr, len(data), epochs))
            self._needs_optimizer = False
        callbacks = list(callbacks or [])
        if not any(isinstance(c, LFSSEpochEnd) for c in callbacks):
            callbacks.insert(0, LFSSEpochEnd(data.x))
        if distributed.active():
            callbacks.insert(0, RankSync())
            if not distributed.is_main():
                kwargs["verbose"] = 0
        # The data shuffles itself, by (seed, epoch); Keras's own shuffling of the batch order
        # draws from the global generator, which a resumed run cannot replay.
        return super().fit(data, epochs=epochs, callbacks=callbacks, shuffle=False, **kwargs)

    # ------------------------------------------------------------ train step

    def _noisy(self, z):
        return z + self.sigma * keras.random.normal(ops.shape(z), seed=self.noise_seed) if self.sigma else z

    def _base_loss(self, z1, z2, t1, t2, gather=distributed.gather, share: float = 1.0):
        """L_S (Eq. 9) for BYOL; SimCLR's NT-Xent or MoCo's InfoNCE for the Table 6 variants.
        ``gather`` collects rows of all ranks; ``share`` weights a loss over this rank's rows."""
        if self.base == "simclr":
            return nt_xent(gather(z1), gather(z2), self.tau)
        if self.base == "byol":
            p1, p2 = (exact(graph_call(self.predictor, self._noisy(z), training=True)) for z in (z1, z2))
            return share * (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2  # the authors average the directions
        queue = self.queue.value.detach()
        loss = info_nce(z1, t2, queue, self.moco_tau) + info_nce(z2, t1, queue, self.moco_tau)
        self._enqueue(ops.concatenate([gather(t1), gather(t2)], axis=0))
        return share * loss

    @torch.no_grad()
    def _enqueue(self, keys):
        n = int(keys.shape[0])
        start = int(self.queue_pointer.value)
        rows = (torch.arange(n, device=keys.device) + start) % self.queue_size
        self.queue.value[rows] = keys[: self.queue_size]
        self.queue_pointer.assign((start + n) % self.queue_size)

    def _grad_transform(self, grads, variables):
        """The mean over the ranks (under torchrun), PyTorch-style L2 weight decay, and the
        predictor's 10x learning rate."""
        grads = distributed.average_gradients(grads)
        out = []
        for g, v in zip(grads, variables):
            g = g + self.weight_decay * v.value if self.weight_decay else g
            out.append(g * self.predictor_lr_scale if id(v) in self._predictor_ids else g)
        return out

    def trainable_variables_of_step(self) -> list:
        """Only the online network and the predictor learn."""
        return self.online.trainable_weights + (self.predictor.trainable_weights if self.predictor else [])

    def train_step(self, data):
        """One LFSS iteration (Algorithm 1): Eq. 10 on two views, then the EMA update."""
        images = ops.convert_to_tensor(images_of(data))
        index = torch.as_tensor(data[1], device=images.device)  # of the global batch (IndexedImages)
        l_s, l_i, l_c = self.loss_terms(images, index)
        loss = l_s + self.lam * (l_i + l_c)  # Eq. 10
        apply_gradients(self, loss, self.trainable_variables_of_step(), self._grad_transform)
        self.update_target()
        for name, value in (("loss", loss), ("l_s", l_s), ("l_i", l_i), ("l_c", l_c)):
            self.loss_trackers[name].update_state(value)
        return self.get_metrics_result()

    def loss_terms(self, images, index) -> tuple:
        """L_S (Eq. 9), L_I (Eq. 4) and L_C (Eq. 8) of one batch, on two views drawn from the
        augmentation's generator, with the graph to the online network and the predictor (the
        terms the step weights as Eq. 10); a term that is off is zero. ``index``: the rows of
        the batch in the data set (L_C's pseudo-labels). Every network runs in training mode on
        one view at a time (batch statistics per view), as in the authors' code."""
        sizes = distributed.shard_sizes(int(index.shape[0]))  # rows of each rank: [n] alone
        share = images.shape[0] * len(sizes) / sum(sizes)  # this rank's weight in a mean over all rows

        def gather(rows):
            return distributed.gather(rows, sizes)

        x1 = self.normalise(self.augment(images, training=True))  # x^o
        x2 = self.normalise(self.augment(images, training=True))  # x^t
        z1, z2 = _per_view(self.online, x1, x2)
        t1 = t2 = None
        if self.base != "simclr" or self.cluster_active:
            with torch.no_grad():
                t1, t2 = _per_view(self.target, x1, x2)
        l_s = self._base_loss(z1, z2, t1, t2, gather, share)
        l_i = l_c = ops.zeros(())
        if self.use_stability:
            with torch.no_grad():
                p1, p2 = (gather(p) for p in _per_view(self.predecessor, x1, x2))
            z1, z2 = gather(z1), gather(z2)
            l_i = (nt_xent_self(z1, p1, self.tau) + nt_xent_self(z2, p2, self.tau)) / 2  # Eq. 4
            if self.cluster_active:  # Eq. 8, after the warm-up
                labels, keep = self.pseudo_labels[index], self.keep[index]
                t1, t2 = gather(t1), gather(t2)
                l_c = cluster_loss(z1, t2, labels, keep, self.n_clusters, self.tau)
                l_c = (l_c + cluster_loss(z2, t1, labels, keep, self.n_clusters, self.tau)) / 2
        return l_s, l_i, l_c

    # ----------------------------------------------------- embed and cluster

    def embed(self, x, batch_size: int = 512) -> np.ndarray:
        """Target embeddings ``f_t(x)`` of un-augmented images (float in [0, 1] or uint8,
        possibly memory-mapped: read batch by batch), as a float32 NumPy array."""
        return self._embed_with(self.target, x, batch_size)

    def predecessor_embed(self, x, batch_size: int = 512) -> np.ndarray:
        """Predecessor embeddings ``f_p(x)``, as :meth:`embed`."""
        return self._embed_with(self.predecessor, x, batch_size)

    @torch.no_grad()
    def _embed_with(self, network: keras.Model, x, batch_size: int) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for start in range(0, len(x), batch_size):
            batch = self.normalise(ops.convert_to_tensor(to_unit_float(np.asarray(x[start : start + batch_size]))))
            out.append(np.asarray(ops.convert_to_numpy(network(batch, training=False)), np.float32))
        return np.concatenate(out)

    def predict_clusters(self, x) -> tuple[np.ndarray, None]:
        """Hard labels of ``x`` (:meth:`predict_labels`) and no confidence: k-means gives none."""
        return self.predict_labels(x), None

    def predict_labels(self, x, seed: int = 0, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Cosine k-means (K = ``n_clusters``, 10 restarts) on the unit-normalised target
        embeddings of ``x``, as the authors' evaluation."""
        z = self.embed(x) if embeddings is None else embeddings
        self.choose_n_clusters(z)
        return cosine_kmeans(_unit(z), self.n_clusters, seed=seed)

    def choose_n_clusters(self, z: np.ndarray) -> None:
        """Choose K from the target embeddings ``z`` of every image (unit-normalised, as the
        cosine k-means sees them) when it is not set yet; under torchrun rank 0 chooses and the
        other ranks take its choice."""
        if self.n_clusters is not None:
            return
        config = None
        if distributed.is_main():
            choice = choose_k(_unit(z), self.k_range, seed=self.seed)
            print(f"Chose {choice.describe()}", flush=True)
            config = choice.to_config()
        self.k_choice = distributed.broadcast_object(config)
        self.n_clusters = self.k_choice["k"]

    def evaluate_clustering(self, x, y, runs: int = 10, embeddings: np.ndarray | None = None) -> dict[str, float]:
        """ACC/NMI/ARI of k-means on the target embeddings, mean and std over ``runs`` seeds
        (the paper averages 10 k-means runs; the authors' seeds). Only labelled samples are clustered and scored
        (label ``-1`` marks unlabelled ones, as STL-10's extra split)."""
        z = self.embed(x) if embeddings is None else embeddings
        labelled = np.asarray(y) >= 0
        z, y = z[labelled], np.asarray(y)[labelled]
        seeds = list(EVALUATION_SEEDS[:runs]) + list(range(runs - len(EVALUATION_SEEDS)))
        scores = [evaluate(y, self.predict_labels(None, seed=s, embeddings=z)) for s in seeds]
        out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        out.update({f"{k}_std": float(np.std([s[k] for s in scores])) for k in scores[0]})
        return out

    def refresh_pseudo_labels(self, x) -> np.ndarray:
        """LFSS Eqs. 5-7 bookkeeping: stability ``cos(f_t(x), f_p(x))`` of every sample, the
        pseudo-labels (cosine k-means on the raw target embeddings, 10 restarts from seed 0, as
        the authors' code every epoch), and the keep mask without the ``delta`` least stable.
        Returns the stability. Under torchrun each rank embeds its slice of ``x`` and k-means
        runs sharded (:func:`~deepstab.nn.kmeans.cosine_kmeans`); only the labels and
        stabilities are gathered, so every rank holds the same state."""
        part = distributed.shard(len(x))  # under torchrun each rank embeds and clusters its slice
        z_t = self.embed(x[part])
        if self.n_clusters is None:
            self.choose_n_clusters(distributed.gather_array(z_t, len(x)))
        stability = distributed.gather_array(cosine_stability(z_t, self.predecessor_embed(x[part])), len(x))
        labels = distributed.gather_array(cosine_kmeans(z_t, self.n_clusters, seed=0, sharded=True), len(x))
        n_drop = int(math.floor(self.delta * len(x)))
        keep = np.ones(len(x), bool)
        keep[np.argsort(stability, kind="stable")[:n_drop]] = False
        self.set_cluster_state(labels, keep)
        return stability

    def average_moving_statistics(self) -> None:
        """Under torchrun, the moving statistics of every batch normalisation replaced by their
        mean over the ranks (batch statistics differ between ranks unless ``sync_batch_norm``)."""
        networks = (self.online, self.target, self.predictor)
        layers = [layer for network in networks if network is not None for layer in _batch_norms(network)]
        distributed.average_([t for layer in layers for t in (layer.moving_mean.value, layer.moving_variance.value)])

    def random_generators(self) -> list:
        """The seed generators of the augmentation and of the noise σξ."""
        return [self.augment.seed_generator, self.noise_seed]

    def training_state(self) -> dict[str, np.ndarray]:
        """The per-sample state of ``L_C`` (pseudo-labels and keep mask) and a chosen K, for checkpoints."""
        state = {"k_choice": np.array(json.dumps(self.k_choice))} if self.k_choice else {}
        if self.pseudo_labels is None:
            return state
        return state | {"labels": ops.convert_to_numpy(self.pseudo_labels), "keep": ops.convert_to_numpy(self.keep)}

    def restore_training_state(self, state: dict[str, np.ndarray]) -> None:
        """Put back what :meth:`training_state` returned."""
        if "k_choice" in state:
            self.k_choice = json.loads(str(state["k_choice"]))
            self.n_clusters = self.k_choice["k"]
        if "labels" in state:
            self.set_cluster_state(state["labels"], state["keep"])

    def set_cluster_state(self, labels: np.ndarray, keep: np.ndarray) -> None:
        """Set the per-sample pseudo-labels and keep mask that ``L_C`` uses."""
        self.pseudo_labels = torch.as_tensor(np.asarray(labels, np.int64), device=_device(self))
        self.keep = torch.as_tensor(np.asarray(keep, bool), device=_device(self))

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": self.image_shape,
            "n_clusters": self.n_clusters,
            "depth": self.depth,
            "width": self.width,
            "hidden": self.hidden,
            "dim": self.dim,
            "base": self.base,
            "stability": self.use_stability,
            "eta": self.eta,
            "sigma": self.sigma,
            "delta": self.delta,
            "lam": self.lam,
            "tau": self.tau,
            "moco_tau": self.moco_tau,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "predictor_lr_scale": self.predictor_lr_scale,
            "mean": self.mean,
            "std": self.std,
            "queue_size": self.queue_size,
            "seed": self.seed,
            "sync_batch_norm": self.sync_batch_norm,
            "k_range": f"{self.k_range[0]}:{self.k_range[1]}",
            "k_choice": self.k_choice,
        }


def _per_view(network: keras.Model, x1, x2):
    """``network`` in training mode on each view (:func:`~deepstab.nn.steps.graph_call`). One
    call on the two views stacked, each normalised with its own statistics, computes the same
    but was 10-25% slower on a CPU (larger tensors, a copy per batch normalisation)."""
    return exact(graph_call(network, x1, training=True)), exact(graph_call(network, x2, training=True))


def _batch_norms(network: keras.Model) -> list[FusedBatchNormalization]:
    return [
        layer for layer in network._flatten_layers(include_self=False) if isinstance(layer, FusedBatchNormalization)
    ]


def _copy_weights(source: keras.Model, destination: keras.Model) -> None:
    for d, s in zip(destination.weights, source.weights):
        d.assign(s.value)


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _device(model: keras.Model):
    return model.online.weights[0].value.device
