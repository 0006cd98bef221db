"""The autoencoders of the centroid methods: the convolutional one of DECS
(:class:`ConvAutoencoder`) and the feed-forward one of DEC, IDEC and DCN
(:class:`DenseAutoencoder`). Both are pretrained with MSE on randomly shifted and rotated views
of the images (stage 1 of every centroid method, DEC §3.2, DECS §3.1)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from deepstab import checks
from deepstab.nn.augment import RandomShiftRotation
from deepstab.nn.networks import DEFAULT_FILTERS, DENSE_HIDDEN, build_conv_autoencoder, build_dense_autoencoder
from deepstab.nn.steps import apply_gradients, images_of


class AugmentedAutoencoder(keras.Model):
    """An ``encoder`` and ``decoder`` pretrained on shifted and rotated views of the images
    with MSE.

    Args:
        input_shape: image shape (H, W, C).
        embedding_dim: size of the embedding.
        shift: largest random shift, as a share of width and height (0 disables).
        rotation: largest random rotation in degrees (0 disables).
        networks: ``(image shape, embedding_dim) -> (encoder, decoder)``.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int,
        shift: float,
        rotation: float,
        networks: Callable[[tuple[int, ...], int], tuple[keras.Model, keras.Model]],
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(checks.positive_int("input_shape", s) for s in input_shape)
        self.embedding_dim = checks.positive_int("embedding_dim", embedding_dim)
        self.shift, self.rotation = float(shift), float(rotation)
        # The networks first: their initial weights and the augmentation's default seed draw
        # from the same global random state, and this order gives a seed its usual weights.
        self.encoder, self.decoder = networks(self.image_shape, self.embedding_dim)
        self.augment = RandomShiftRotation(self.shift, self.rotation, name="augment")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training=training), training=training)

    def prepare(self, x: np.ndarray) -> None:
        """Fit whatever depends on the training images before pretraining (nothing here)."""

    def augmented(self, x):
        """A randomly shifted and rotated copy of the batch ``x`` (unchanged when both are 0)."""
        return self.augment(x, training=True) if self.shift or self.rotation else x

    def reconstruction_loss(self, x, z):
        """MSE between the decoding of the embeddings ``z`` and the images ``x``."""
        return ops.mean(ops.square(self.decoder(z, training=True) - x))

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        """One pretraining step: MSE reconstruction of an augmented view of the batch."""
        x = self.augmented(ops.convert_to_tensor(images_of(data)))
        loss = self.reconstruction_loss(x, self.encoder(x, training=True))
        apply_gradients(self, loss, self.trainable_weights)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {
            **super().get_config(),
            "input_shape": self.image_shape,
            "embedding_dim": self.embedding_dim,
            "shift": self.shift,
            "rotation": self.rotation,
        }


@keras.saving.register_keras_serializable(package="deepstab")
class ConvAutoencoder(AugmentedAutoencoder):
    """The DECS convolutional autoencoder, pretrained on augmented images with MSE.

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
        super().__init__(
            input_shape,
            embedding_dim,
            shift,
            rotation,
            lambda shape, dim: build_conv_autoencoder(shape, dim, filters),
            **kwargs,
        )
        self.filters = filters

    def test_step(self, data):
        x = images_of(data)
        self.loss_tracker.update_state(ops.mean(ops.square(self(x) - x)))
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="deepstab")
class DenseAutoencoder(AugmentedAutoencoder):
    """The feed-forward autoencoder of the BRB setup, pretrained with MSE on standardised features.

    Args:
        input_shape: image shape (H, W, C); images are flattened inside.
        embedding_dim: size ``e`` of the embedding (the BRB setup: the number of clusters).
        hidden: encoder widths (1024, 512, 256); the decoder mirrors them.
        shift, rotation: augmentation of both stages (0 and 0 disable it).

    :meth:`prepare` (called by ``pretrain``) fits the standardisation to the training images.

    Example:

    >>> import numpy as np
    >>> x = np.random.rand(64, 8, 8, 1).astype("float32")
    >>> ae = DenseAutoencoder((8, 8, 1), 4, hidden=(16, 8))
    >>> ae.prepare(x)
    >>> ae.compile(optimizer="adam")
    >>> sorted(ae.fit(x, epochs=1, verbose=0).history)
    ['loss']
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        embedding_dim: int = 10,
        hidden: tuple[int, ...] = DENSE_HIDDEN,
        shift: float = 0.1,
        rotation: float = 10.0,
        **kwargs,
    ):
        widths = tuple(checks.positive_int("hidden", h) for h in hidden)
        super().__init__(
            input_shape,
            embedding_dim,
            shift,
            rotation,
            lambda shape, dim: build_dense_autoencoder(shape, dim, widths),
            **kwargs,
        )
        self.hidden = widths

    @property
    def standardise(self) -> keras.layers.Normalization:
        return self.encoder.get_layer("standardise")

    def prepare(self, x: np.ndarray) -> None:
        """Fit the per-feature standardisation to ``x``: every pixel's mean, and its variance
        floored at the square of the average pixel standard deviation, so that a shifted or
        rotated view cannot blow up a pixel that is (nearly) always blank (with the raw
        variance, ink in a blank border pixel of an 8x8 digit became ~10^6 after scaling)."""
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        layer = self.standardise
        layer.adapt(flat)
        variance = ops.convert_to_numpy(layer.adapt_variance)
        layer.adapt_variance.assign(np.maximum(variance, float(np.mean(np.sqrt(variance))) ** 2))
        layer.finalize_state()

    def reconstruction_loss(self, x, z):
        """MSE between the decoding of ``z`` and the standardised features of ``x`` (pretraining
        trains on the views the clustering stage trains on)."""
        target = self.standardise(ops.reshape(x, (ops.shape(x)[0], -1)))
        return ops.mean(ops.square(self.decoder(z, training=True) - target))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}
