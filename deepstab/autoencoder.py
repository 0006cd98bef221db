"""What the two autoencoders share (the convolutional one of DECS, ``deepstab.decs``, and the
feed-forward one of the DEC family, ``deepstab.dec``): the image shape and embedding size, the
random shifts and rotations of stage 1, and a pretraining step on an augmented view with MSE."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops

from deepstab.augment import RandomShiftRotation
from deepstab.training import apply_gradients, images_of


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
        self.image_shape = tuple(int(s) for s in input_shape)
        self.embedding_dim = int(embedding_dim)
        self.shift, self.rotation = float(shift), float(rotation)
        # The networks first: their initial weights and the augmentation's default seed draw
        # from the same global random state, and this order gives a seed its usual weights.
        self.encoder, self.decoder = networks(self.image_shape, self.embedding_dim)
        self.augment = RandomShiftRotation(self.shift, self.rotation, name="augment")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training=training), training=training)

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
