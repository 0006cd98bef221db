"""deepstab's Keras layers: the Student-t clustering layer (DEC; DECS Eq. 5), batch
normalisation and convolution as PyTorch computes them, and fixed standardisation."""

from __future__ import annotations

import contextlib
import contextvars

import keras
import numpy as np
import torch
import torch.nn.functional as F
from keras import ops

from deepstab import checks, distributed
from deepstab.nn.constants import like
from deepstab.precision import EXACT


@keras.saving.register_keras_serializable(package="deepstab")
class ClusteringLayer(keras.layers.Layer):
    """Soft assignment of embeddings to trainable centroids with a Student-t kernel.

    DECS Eq. 5: ``q_ij = (1 + ||z_i - m_j||^2 / α)^(-(α+1)/2) / Σ_j' (...)``,
    so each row of ``q`` sums to 1.

    Args:
        n_clusters: number of centroids K.
        alpha: degrees of freedom α of the Student-t kernel (DECS paper: 1;
            the DECS authors' code: 0.5).

    Example:

    >>> import numpy as np
    >>> layer = ClusteringLayer(n_clusters=3)
    >>> q = layer(np.random.rand(5, 2).astype("float32"))
    >>> tuple(q.shape), bool(np.allclose(keras.ops.convert_to_numpy(q).sum(1), 1.0))
    ((5, 3), True)
    """

    def __init__(self, n_clusters: int, alpha: float = 1.0, **kwargs):
        super().__init__(**{"dtype": EXACT, **kwargs})
        self.n_clusters = checks.positive_int("n_clusters", n_clusters)
        self.alpha = checks.positive("alpha", alpha)

    def build(self, input_shape):
        self.centroids = self.add_weight(
            name="centroids", shape=(self.n_clusters, input_shape[-1]), initializer="glorot_uniform"
        )

    def call(self, z):
        distances = ops.sum(ops.square(ops.expand_dims(z, 1) - self.centroids), axis=-1)
        base = 1.0 + distances / self.alpha
        # A tensor exponent: a Python number takes another PyTorch kernel (a reciprocal for -1)
        # that rounds differently, and a seed would give other results than the documented ones.
        kernel = ops.power(base, like(-(self.alpha + 1.0) / 2.0, base))
        return kernel / ops.sum(kernel, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_clusters)

    def get_config(self):
        return {**super().get_config(), "n_clusters": self.n_clusters, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="deepstab")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by PyTorch's fused kernel.

    Same weights, arguments and saved form as the Keras layer, for channels on
    axis 1 (NCHW feature maps or (N, C) features). Keras composes batch
    normalisation from a dozen element-wise ops on the torch backend; that
    made the DECS autoencoder step 25% slower than plain PyTorch on CPU.
    The moving variance is updated with the unbiased batch variance, as
    PyTorch does (Keras uses the biased one; the two differ by a factor
    ``n / (n - 1)`` of the batch's element count per channel).

    ``frozen_mode`` says what a frozen layer (``trainable=False``) does when called with
    ``training=True``: ``"inference"`` (Keras's: the moving statistics), ``"batch"`` (the
    batch's statistics, the moving ones untouched: LFSS's predecessor) or ``"track"`` (the batch's
    statistics, and the moving ones updated, as a PyTorch module in training mode whose weights
    get no gradient: LFSS's EMA target).

    Inside ``with views(V):`` a training-mode batch is taken as ``V`` views stacked one after
    the other (rows ``[v N, (v + 1) N)`` are view ``v``): each view is normalised with its own
    batch statistics, and the moving statistics are updated by one view after the other. One
    call of a network over the stacked views then computes what ``V`` calls would.

    With ``sync = True`` and several processes training (:mod:`deepstab.distributed`), a
    training-mode batch is normalised with the statistics of the global batch (the moments
    all-reduced, gradients flowing through them), as ``torch.nn.SyncBatchNorm`` computes them
    (which refuses CPU tensors): N processes of batch b then compute what one of batch N b does.
    """

    frozen_mode = "inference"
    sync = False

    def __init__(self, axis: int = 1, **kwargs):
        if axis != 1:
            raise ValueError(f"FusedBatchNormalization normalises channels on axis 1, got axis={axis!r}.")
        super().__init__(axis=axis, **kwargs)

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            return super().call(inputs, training=training, mask=mask)
        gamma, beta = self.gamma.value if self.scale else None, self.beta.value if self.center else None
        mode = ("track" if self.trainable else self.frozen_mode) if training else "inference"
        n_views = _VIEWS.get()
        if self.sync and mode != "inference" and distributed.active():
            return self._synced(inputs, gamma, beta, update=mode == "track")
        if n_views > 1 and mode != "inference":
            return self._per_view(inputs, n_views, gamma, beta, update=mode == "track")
        if mode == "batch":
            return F.batch_norm(inputs, None, None, gamma, beta, training=True, eps=self.epsilon)
        mean, variance = self.moving_mean.value, self.moving_variance.value
        return F.batch_norm(inputs, mean, variance, gamma, beta, mode == "track", 1.0 - self.momentum, self.epsilon)

    def _synced(self, inputs, gamma, beta, update: bool):
        """Batch normalisation with the moments of the batches of all processes (summed in float32
        whatever the inputs' precision)."""
        dims = [0, *range(2, inputs.ndim)]
        c = inputs.shape[1]
        wide = inputs.float()
        count = torch.full((1,), inputs.numel() / c, dtype=wide.dtype, device=inputs.device)
        moments = distributed.all_reduce_sum(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
        n = moments[-1]
        mean = moments[:c] / n
        variance = torch.clamp(moments[c : 2 * c] / n - mean * mean, min=0.0)
        if update:
            with torch.no_grad():
                self.moving_mean.value.lerp_(mean.detach(), 1.0 - self.momentum)
                unbiased = variance.detach() * (n / torch.clamp(n - 1.0, min=1.0))
                self.moving_variance.value.lerp_(unbiased, 1.0 - self.momentum)
        shape = (1, c) + (1,) * (inputs.ndim - 2)
        scale = torch.rsqrt(variance + self.epsilon)
        if gamma is not None:
            scale = scale * gamma
        shift = -mean * scale + (beta if beta is not None else 0.0)
        return (wide * scale.reshape(shape) + shift.reshape(shape)).to(inputs.dtype)

    def _per_view(self, inputs, n_views: int, gamma, beta, update: bool):
        """Batch normalisation of each of ``n_views`` stacked views with its own statistics, the
        moving statistics updated by one view after the other."""
        n = inputs.shape[0] // n_views
        mean, variance = (self.moving_mean.value, self.moving_variance.value) if update else (None, None)
        parts = [
            F.batch_norm(
                inputs[v * n : (v + 1) * n], mean, variance, gamma, beta, True, 1.0 - self.momentum, self.epsilon
            )
            for v in range(n_views)
        ]
        return torch.cat(parts)


@keras.saving.register_keras_serializable(package="deepstab")
class TorchConv2D(keras.layers.Layer):
    """A square 2-D convolution of NCHW feature maps without bias, as ``torch.nn.Conv2d`` with
    ``padding=kernel_size // 2`` computes it.

    Keras's ``Conv2D`` differs in two costly ways on the torch backend: its 'same' padding puts
    the odd pixel of a strided convolution on one side only (so a ResNet needs an explicit
    ``ZeroPadding2D``, a padded copy of every strided input), and it keeps its kernel as
    (kh, kw, in, out), which the convolution copies into (out, in, kh, kw) on every call. This
    layer keeps the kernel as PyTorch does, (out, in, kh, kw); ``kernel_initializer`` is drawn
    in Keras's layout and transposed, so its fans are those of the same Keras ``Conv2D``.

    Example:

    >>> import numpy as np
    >>> layer = TorchConv2D(4, 3, strides=2)
    >>> tuple(layer(np.zeros((2, 3, 9, 9), "float32")).shape), tuple(layer.kernel.shape)
    ((2, 4, 5, 5), (4, 3, 3, 3))
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.filters = checks.positive_int("filters", filters)
        self.kernel_size = checks.positive_int("kernel_size", kernel_size)
        self.strides = checks.positive_int("strides", strides)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        k, cin, cout = self.kernel_size, int(input_shape[1]), self.filters

        def torch_layout(shape, dtype=None):  # contiguous, or every call would copy it
            kernel = ops.convert_to_tensor(self.kernel_initializer((k, k, cin, cout), dtype=dtype))
            return ops.transpose(kernel, (3, 2, 0, 1)).contiguous()

        self.kernel = self.add_weight(name="kernel", shape=(cout, cin, k, k), initializer=torch_layout)

    def call(self, x):
        return F.conv2d(x, self.kernel.value, stride=self.strides, padding=self.kernel_size // 2)

    def compute_output_shape(self, input_shape):
        n, _, h, w = input_shape
        p, k, s = self.kernel_size // 2, self.kernel_size, self.strides
        side = [None if d is None else (d + 2 * p - k) // s + 1 for d in (h, w)]
        return (n, self.filters, *side)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


_VIEWS: contextvars.ContextVar[int] = contextvars.ContextVar("views", default=1)


@contextlib.contextmanager
def views(n: int):
    """Within the block, training-mode :class:`FusedBatchNormalization` layers take a batch as
    ``n`` stacked views, each normalised with its own statistics (see there)."""
    token = _VIEWS.set(int(n))
    try:
        yield
    finally:
        _VIEWS.reset(token)


@keras.saving.register_keras_serializable(package="deepstab")
class ToChannelsFirst(keras.layers.Layer):
    """NHWC images to contiguous NCHW feature maps (one copy)."""

    def call(self, x):
        return ops.transpose(x, (0, 3, 1, 2)).contiguous()

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, c, h, w)


@keras.saving.register_keras_serializable(package="deepstab")
class Standardize(keras.layers.Layer):
    """``(x - mean) / std`` with fixed statistics of shape ``stats_shape`` that broadcast over
    NHWC inputs: one value per channel (``(C,)``) or per pixel (``(H, W, C)``). The statistics
    are weights (saved with the model) set by :meth:`set_statistics`; they start at 0 and 1.

    Example:

    >>> import numpy as np
    >>> layer = Standardize((1,))
    >>> layer.set_statistics(np.array([0.5]), np.array([0.25]))
    >>> keras.ops.convert_to_numpy(layer(np.full((1, 2, 2, 1), 1.0, "float32"))).ravel().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, stats_shape: tuple[int, ...], **kwargs):
        super().__init__(**{"dtype": EXACT, **kwargs})
        self.stats_shape = tuple(int(s) for s in stats_shape)
        self.mean = self.add_weight(name="mean", shape=self.stats_shape, initializer="zeros", trainable=False)
        self.std = self.add_weight(name="std", shape=self.stats_shape, initializer="ones", trainable=False)

    def set_statistics(self, mean, std) -> None:
        self.mean.assign(np.asarray(mean, np.float32).reshape(self.stats_shape))
        self.std.assign(np.asarray(std, np.float32).reshape(self.stats_shape))

    def call(self, x):
        return (x - self.mean) / self.std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "stats_shape": self.stats_shape}


@keras.saving.register_keras_serializable(package="deepstab")
class Resize(keras.layers.Layer):
    """Bilinear resizing of NHWC images to ``size`` (height, width), as torchvision's ``Resize``
    on tensors (half-pixel centres, antialiasing when shrinking).

    Example:

    >>> import numpy as np
    >>> Resize((4, 4))(np.ones((2, 2, 2, 1), "float32")).shape
    torch.Size([2, 4, 4, 1])
    """

    def __init__(self, size: tuple[int, int], **kwargs):
        super().__init__(**{"dtype": EXACT, **kwargs})
        self.size = tuple(int(s) for s in size)

    def call(self, x):
        x = ops.convert_to_tensor(x)
        resized = F.interpolate(
            x.permute(0, 3, 1, 2), size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return resized.permute(0, 2, 3, 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
