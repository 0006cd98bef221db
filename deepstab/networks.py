"""Network builders: the DECS convolutional autoencoder (DECS §4.5, the authors' code).

Encoder: Conv(32)-BN-MaxPool, Conv(64)-BN-MaxPool, Conv(128)-BN-MaxPool,
Conv(256)-BN, Flatten, Dense(embedding). 3x3 kernels, ReLU. The decoder mirrors
it: Dense -> Reshape -> Conv2DTranspose stride 2 (128, 64, 32) with BN ->
Conv2DTranspose(channels).

Any input size works: sides that are not a multiple of 8 are zero-padded to
the next multiple at the encoder's input and cropped at the decoder's output
(28x28 MNIST runs as 32x32). The authors instead use a 'valid' last
convolution for 28x28; the padding keeps one architecture for every size.
Inputs and outputs are NHWC; inside, the layers run channels-first, the
layout PyTorch's convolutions want, which saves a layout copy per layer.
"""

from __future__ import annotations

import keras
from keras import layers

from deepstab.layers import FusedBatchNormalization

DEFAULT_FILTERS = (32, 64, 128, 256)
CF = "channels_first"


def _padding(side: int) -> tuple[int, int]:
    extra = -side % 8
    return extra // 2, extra - extra // 2


def build_conv_autoencoder(
    input_shape: tuple[int, int, int], embedding_dim: int = 10, filters: tuple[int, ...] = DEFAULT_FILTERS
) -> tuple[keras.Model, keras.Model]:
    """Build the ``(encoder, decoder)`` pair for images of ``input_shape`` (H, W, C).

    ``filters`` holds four widths: three downsampling stages and the last conv.
    """
    height, width, channels = (int(s) for s in input_shape)
    if len(filters) != 4:
        raise ValueError(f"filters must hold 4 widths (3 downsampling stages and the last conv), got {filters!r}.")
    pad_h, pad_w = _padding(height), _padding(width)
    inner = ((height + sum(pad_h)) // 8, (width + sum(pad_w)) // 8)

    inputs = keras.Input(shape=(height, width, channels), name="image")
    h = layers.Permute((3, 1, 2))(inputs)  # NHWC in, NCHW inside: no layout copies per layer
    if sum(pad_h + pad_w):
        h = layers.ZeroPadding2D((pad_h, pad_w), data_format=CF)(h)
    for width_ in filters[:3]:
        h = layers.Conv2D(width_, 3, padding="same", activation="relu", data_format=CF)(h)
        h = FusedBatchNormalization()(h)
        h = layers.MaxPooling2D(2, data_format=CF)(h)
    h = layers.Conv2D(filters[3], 3, padding="same", activation="relu", data_format=CF)(h)
    h = FusedBatchNormalization()(h)
    embedding = layers.Dense(embedding_dim, name="embedding")(layers.Flatten(data_format=CF)(h))
    encoder = keras.Model(inputs, embedding, name="encoder")

    code = keras.Input(shape=(embedding_dim,), name="embedding")
    h = layers.Dense(inner[0] * inner[1] * filters[3], activation="relu")(code)
    h = layers.Reshape((filters[3], inner[0], inner[1]))(h)
    for width_ in reversed(filters[:3]):
        h = layers.Conv2DTranspose(width_, 3, strides=2, padding="same", activation="relu", data_format=CF)(h)
        h = FusedBatchNormalization()(h)
    h = layers.Conv2DTranspose(channels, 3, padding="same", data_format=CF)(h)
    if sum(pad_h + pad_w):
        h = layers.Cropping2D((pad_h, pad_w), data_format=CF)(h)
    decoder = keras.Model(code, layers.Permute((2, 3, 1), name="reconstruction")(h), name="decoder")
    return encoder, decoder
