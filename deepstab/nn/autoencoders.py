"""The autoencoders of the centroid methods: the convolutional one of DECS
(:class:`ConvAutoencoder`) and the feed-forward one of DEC, IDEC and DCN
(:class:`DenseAutoencoder`). Both are pretrained with MSE (stage 1 of every centroid method,
DEC §3.2, DECS §3.1).

Invariants: ``encoder`` maps the images as given (N, H, W, C) in [0, 1] to embeddings;
``inputs(x)`` is what the encoder's inner network sees (the images resized, for the dense
autoencoder), ``augmented(inputs(x))`` a random view of it, and ``core`` embeds such inputs,
so ``encoder(x) == core(inputs(x))``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from deepstab import checks
from deepstab.nn.augment import RandomAffine, RandomShiftRotation
from deepstab.nn.layers import Resize
from deepstab.nn.networks import DEFAULT_FILTERS, DENSE_HIDDEN, INITS, build_conv_autoencoder, build_dense_autoencoder
from deepstab.nn.steps import apply_gradients, clip_by_global_norm, graph_call, images_of
from deepstab.precision import exact


class AugmentedAutoencoder(keras.Model):
    """An ``encoder`` and ``decoder`` pretrained with MSE, on random views of the images when
    ``pretrain_augmented``.

    Args:
        input_shape: image shape (H, W, C).
        embedding_dim: size of the embedding.
        networks: ``() -> (core encoder, decoder)``, built before the augmentation layer (both
            draw from Keras's global random state; this order fixes what a seed gives).
        augment: ``() -> augmentation layer`` (random views when called with ``training=True``).
        pretrain_augmented: pretrain on random views (else on the images themselves).
        clip_norm: clip the gradients of the autoencoder's weights to this global L2 norm.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int,
        networks: Callable[[], tuple[keras.Model, keras.Model]],
        augment: Callable[[], keras.layers.Layer],
        pretrain_augmented: bool = True,
        clip_norm: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(checks.positive_int("input_shape", s) for s in input_shape)
        self.embedding_dim = checks.positive_int("embedding_dim", embedding_dim)
        self.pretrain_augmented = bool(pretrain_augmented)
        self.clip_norm = None if clip_norm is None else checks.positive("clip_norm", clip_norm)
        self.core, self.decoder = networks()
        self.augment = augment()
        self.encoder = self._outer_encoder()
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    def _outer_encoder(self) -> keras.Model:
        """The encoder of the images as given: ``core`` itself here."""
        return self.core

    def inputs(self, x):
        """The images ``x`` as the core encoder takes them (unchanged here)."""
        return ops.convert_to_tensor(x)

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training=training), training=training)

    def prepare(self, x: np.ndarray) -> None:
        """Fit whatever depends on the training images before pretraining (nothing here)."""

    def augmented(self, x):
        """A random view of the batch ``x`` (of :meth:`inputs`)."""
        return self.augment(x, training=True)

    def reconstruction_target(self, x):
        """What the decoder reconstructs from the embedding of the inputs ``x``: ``x`` here."""
        return x

    def reconstruction_loss(self, x, z):
        """MSE between the decoding of the embeddings ``z`` and the target of the inputs ``x``."""
        return ops.mean(ops.square(self.decode(z, training=True) - self.reconstruction_target(x)))

    def embed_inputs(self, x, training: bool = False):
        """``core(x)`` in float32, for the training steps (see :func:`~deepstab.nn.steps.graph_call`)."""
        return exact(graph_call(self.core, x, training))

    def decode(self, z, training: bool = False):
        """``decoder(z)``, for the training steps (see :func:`~deepstab.nn.steps.graph_call`)."""
        return graph_call(self.decoder, z, training)

    def clip(self, grads: list, variables: list) -> list:
        """``grads`` of ``variables``, those of the autoencoder's weights clipped in place to a
        global norm of ``clip_norm`` (the BRB authors' code clips at 500); the rest unchanged."""
        if self.clip_norm is not None:
            own = self._weight_ids()
            clip_by_global_norm([g for g, v in zip(grads, variables) if id(v) in own and g is not None], self.clip_norm)
        return grads

    def _weight_ids(self) -> set[int]:
        if getattr(self, "_ids", None) is None:
            self._ids = frozenset(id(v) for v in self.trainable_weights)
        return self._ids

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        """One pretraining step: MSE reconstruction of the inputs (a random view of them when
        ``pretrain_augmented``)."""
        x = self.inputs(images_of(data))
        if self.pretrain_augmented:
            x = self.augmented(x)
        loss = self.reconstruction_loss(x, self.embed_inputs(x, training=True))
        apply_gradients(self, loss, self.trainable_weights, self.clip)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x = self.inputs(images_of(data))
        self.loss_tracker.update_state(self.reconstruction_loss(x, self.core(x, training=False)))
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {**super().get_config(), "input_shape": self.image_shape, "embedding_dim": self.embedding_dim}


@keras.saving.register_keras_serializable(package="deepstab")
class ConvAutoencoder(AugmentedAutoencoder):
    """The DECS convolutional autoencoder, pretrained on shifted and rotated views with MSE.

    Args:
        input_shape: image shape (H, W, C).
        embedding_dim: size of the embedding (DECS: 10).
        filters: the encoder's four convolution widths.
        shift: largest random shift, as a share of width and height (0 disables).
        rotation: largest random rotation in degrees (0 disables).

    Example:

    >>> import numpy as np
    >>> ae = ConvAutoencoder((8, 8, 1), filters=(4, 4, 4, 4))
    >>> ae.compile(optimizer="adam")
    >>> history = ae.fit(np.random.rand(32, 8, 8, 1).astype("float32"), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['loss']
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        filters: tuple[int, ...] = DEFAULT_FILTERS,
        shift: float = 0.1,
        rotation: float = 10.0,
        **kwargs,
    ):
        filters = tuple(int(f) for f in filters)
        self.filters = filters
        super().__init__(
            input_shape,
            embedding_dim,
            lambda: build_conv_autoencoder(input_shape, embedding_dim, filters),
            lambda: RandomShiftRotation(shift, rotation, name="augment"),
            **kwargs,
        )

    @property
    def shift(self) -> float:
        return self.augment.shift

    @property
    def rotation(self) -> float:
        return self.augment.rotation

    def augmented(self, x):
        return self.augment(x, training=True) if self.shift or self.rotation else x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "shift": self.shift, "rotation": self.rotation}


STANDARDISATIONS = ("channel", "pixel")
AUGMENTATIONS = ("affine", "shift-rotation", "none")


@keras.saving.register_keras_serializable(package="deepstab")
class DenseAutoencoder(AugmentedAutoencoder):
    """The feed-forward autoencoder of the BRB setup (``d-1024-512-256-e``, Dense-BatchNorm-ReLU,
    PyTorch's initialisation), as the BRB authors' code builds and feeds it by default.

    Args:
        input_shape: image shape (H, W, C).
        embedding_dim: size ``e`` of the embedding (the BRB setup: the number of clusters).
        hidden: encoder widths; the decoder mirrors them.
        image_size: side the images are resized to (bilinear) before everything else; ``None``
            takes the authors' 28 for grey images (USPS and optdigits upward) and 32 for colour.
            Give the images' own side to keep them as they are.
        standardise: ``"channel"`` (one mean and unbiased std per channel over all training
            pixels, the authors' code) or ``"pixel"`` (per pixel, the std floored at the average
            pixel's).
        batch_norm: batch normalisation after every hidden layer (the authors' paper runs).
        init: ``"torch"`` (``nn.Linear``'s) or ``"glorot"`` (Keras's).
        augmentation: the random views: ``"affine"`` (rotation ±``rotation``, whole-pixel shift up
            to ``shift``, x-shear ±``shear``, nearest sampling, zero fill: the authors'),
            ``"shift-rotation"`` (DECS's: bilinear, edges repeated, no shear) or ``"none"``.
        pretrain_augmented: pretrain on random views (the authors pretrain on clean images).
        clip_norm: global gradient-norm clip of the autoencoder's weights (the authors': 500).

    :meth:`prepare` (called by ``pretrain``) fits the standardisation to the training images.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> ae = DenseAutoencoder((8, 8, 1), 4, hidden=(16, 8), image_size=12)  # resized to 12x12 inside
    >>> ae.prepare(x)
    >>> ae.compile(optimizer="adam")
    >>> sorted(ae.fit(x, epochs=1, verbose=0).history), ae.encoder(x).shape
    (['loss'], torch.Size([64, 4]))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        hidden: tuple[int, ...] = DENSE_HIDDEN,
        image_size: int | None = None,
        standardise: str = "channel",
        batch_norm: bool = True,
        init: str = "torch",
        augmentation: str = "affine",
        shift: float = 0.1,
        rotation: float = 16.0,
        shear: float = 8.0,
        pretrain_augmented: bool = False,
        clip_norm: float | None = 500.0,
        **kwargs,
    ):
        self.hidden = tuple(checks.positive_int("hidden", h) for h in hidden)
        self.image_size = None if image_size is None else checks.positive_int("image_size", image_size)
        side = self.image_size or (28 if int(input_shape[-1]) == 1 else 32)
        self.standardise = checks.choice("standardise", standardise, STANDARDISATIONS)
        self.batch_norm, self.init = bool(batch_norm), checks.choice("init", init, INITS)
        self.augmentation = checks.choice("augmentation", augmentation, AUGMENTATIONS)
        self.shift, self.rotation, self.shear = float(shift), float(rotation), float(shear)
        self.inner_shape = (side, side, int(input_shape[-1]))
        stats = self.inner_shape if self.standardise == "pixel" else self.inner_shape[-1:]
        super().__init__(
            input_shape,
            embedding_dim,
            lambda: build_dense_autoencoder(
                self.inner_shape, embedding_dim, self.hidden, self.batch_norm, self.init, stats
            ),
            self._augmentation_layer,
            pretrain_augmented,
            clip_norm,
            **kwargs,
        )

    def _augmentation_layer(self) -> keras.layers.Layer:
        if self.augmentation == "affine":
            return RandomAffine(self.shift, self.rotation, self.shear, name="augment")
        rotation = self.rotation if self.augmentation == "shift-rotation" else 0.0
        return RandomShiftRotation(
            self.shift if self.augmentation == "shift-rotation" else 0.0, rotation, name="augment"
        )

    def _outer_encoder(self) -> keras.Model:
        self.resize = Resize(self.inner_shape[:2], name="resize") if self.inner_shape != self.image_shape else None
        if self.resize is None:
            return self.core
        images = keras.Input(self.image_shape, name="image")
        return keras.Model(images, self.core(self.resize(images)), name="encoder")

    def inputs(self, x):
        x = ops.convert_to_tensor(x)
        return x if self.resize is None else self.resize(x)

    def augmented(self, x):
        return x if self.augmentation == "none" else self.augment(x, training=True)

    @property
    def standardise_layer(self):
        return self.core.get_layer("standardise")

    def prepare(self, x: np.ndarray) -> None:
        """Fit the standardisation to the images ``x``. ``"channel"``: the mean and unbiased std
        of each channel over all pixels of ``x`` as given. ``"pixel"``: every pixel's mean of the
        resized images, and its std floored at the average pixel's, so that a view that puts ink
        on a (nearly) always blank pixel cannot blow up."""
        if self.standardise == "channel":
            flat = np.asarray(x, np.float64).reshape(-1, self.image_shape[-1])
            self.standardise_layer.set_statistics(flat.mean(axis=0), flat.std(axis=0, ddof=1))
            return
        inner = np.concatenate(
            [ops.convert_to_numpy(self.inputs(np.asarray(x[i : i + 4096], np.float32))) for i in range(0, len(x), 4096)]
        ).astype(np.float64)
        std = inner.std(axis=0)
        self.standardise_layer.set_statistics(inner.mean(axis=0), np.maximum(std, std.mean()))

    def reconstruction_target(self, x):
        """The standardised, flattened inputs (what the linear output layer reconstructs)."""
        return ops.reshape(self.standardise_layer(x), (ops.shape(x)[0], -1))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden": self.hidden,
            "image_size": self.image_size,
            "standardise": self.standardise,
            "batch_norm": self.batch_norm,
            "init": self.init,
            "augmentation": self.augmentation,
            "shift": self.shift,
            "rotation": self.rotation,
            "shear": self.shear,
            "pretrain_augmented": self.pretrain_augmented,
            "clip_norm": self.clip_norm,
        }
