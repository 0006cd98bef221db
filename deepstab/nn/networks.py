"""Network builders: the DECS convolutional autoencoder (DECS §4.5, the authors' code),
the ResNet backbones with MLP heads of LFSS (ICML 2025, §4.1), and the feed-forward
autoencoder ``d-1024-512-256-e`` of the BRB setup (ICLR 2025) for DEC, IDEC and DCN.

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

import math

import keras
from keras import layers

from deepstab import checks
from deepstab.nn.layers import FusedBatchNormalization, Standardize, ToChannelsFirst, TorchConv2D

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


# Blocks per stage and block type of each ResNet depth (He et al. 2016, Table 1).
RESNETS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}
CIFAR_STEM_MAX_SIDE = 32


# torchvision's ResNet: convolutions drawn from kaiming_normal_(mode="fan_out"), batch
# normalisation with PyTorch's defaults (running averages updated at 0.1, eps 1e-5).
KAIMING_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}
TORCH_DEFAULT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"},
}


def _torch_batch_norm(name: str | None = None) -> FusedBatchNormalization:
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _conv_bn(h, filters: int, kernel: int, stride: int = 1, relu: bool = True, name: str = "", init=KAIMING_FAN_OUT):
    """Conv (no bias, PyTorch's padding ``kernel // 2`` on every side) - BN [- ReLU]."""
    h = TorchConv2D(filters, kernel, strides=stride, kernel_initializer=init, name=f"{name}conv")(h)
    h = _torch_batch_norm(name=f"{name}bn")(h)
    return layers.ReLU()(h) if relu else h


def _residual_block(h, filters: int, stride: int, bottleneck: bool, name: str):
    """A basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) block."""
    out_filters = filters * 4 if bottleneck else filters
    shortcut = h
    if stride != 1 or h.shape[1] != out_filters:
        shortcut = _conv_bn(h, out_filters, 1, stride, relu=False, name=f"{name}down_")
    if bottleneck:
        h = _conv_bn(h, filters, 1, name=f"{name}a_")
        h = _conv_bn(h, filters, 3, stride, name=f"{name}b_")
        h = _conv_bn(h, out_filters, 1, relu=False, name=f"{name}c_")
    else:
        h = _conv_bn(h, filters, 3, stride, name=f"{name}a_")
        h = _conv_bn(h, filters, 3, relu=False, name=f"{name}b_")
    return layers.ReLU()(layers.Add()([h, shortcut]))


def build_resnet(
    input_shape: tuple[int, int, int],
    depth: int = 18,
    width: float = 1.0,
    cifar_stem: bool | None = None,
    name: str = "resnet",
) -> keras.Model:
    """ResNet-18, -34 or -50 mapping NHWC images to globally pooled features, as torchvision
    builds it (v1.5 blocks, its initialisation and padding, PyTorch's batch normalisation).

    ``cifar_stem`` (3x3 first conv, stride 1, no max-pool; drawn as a fresh ``nn.Conv2d``, as
    the LFSS authors replace torchvision's) is chosen automatically for images of at most 32x32
    and the ImageNet stem (7x7 stride 2, max-pool) otherwise. ``width`` scales every stage's
    channels (64, 128, 256, 512 at 1.0), so that tests and CPU runs can use a small network.

    Example:

    >>> net = build_resnet((32, 32, 3), depth=18, width=0.125)
    >>> net.output_shape
    (None, 64)
    """
    checks.choice("depth", depth, sorted(RESNETS))
    width = checks.positive("width", width)
    blocks, bottleneck = RESNETS[depth]
    height, side_w, channels = (int(s) for s in input_shape)
    if cifar_stem is None:
        cifar_stem = max(height, side_w) <= CIFAR_STEM_MAX_SIDE
    stage_filters = [max(int(round(f * width)), 4) for f in (64, 128, 256, 512)]

    inputs = keras.Input(shape=(height, side_w, channels), name="image")
    h = ToChannelsFirst()(inputs)  # contiguous NCHW: faster than a permuted view on a CPU (bench/lfss_bench.py)
    if cifar_stem:
        h = _conv_bn(h, stage_filters[0], 3, name="stem_", init=TORCH_DEFAULT)
    else:
        h = _conv_bn(h, stage_filters[0], 7, 2, name="stem_")
        h = layers.ZeroPadding2D(1, data_format=CF)(h)  # zeros pool as -inf would: the input is >= 0
        h = layers.MaxPooling2D(3, strides=2, padding="valid", data_format=CF)(h)
    for stage, (n_blocks, filters) in enumerate(zip(blocks, stage_filters)):
        for block in range(n_blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            h = _residual_block(h, filters, stride, bottleneck, name=f"s{stage + 1}b{block + 1}_")
    features = layers.GlobalAveragePooling2D(data_format=CF, name="features")(h)
    return keras.Model(inputs, features, name=name)


def build_mlp(
    input_dim: int, hidden: int = 4096, output_dim: int = 256, name: str = "mlp", init: str = "torch"
) -> keras.Model:
    """BYOL's projector / predictor: Dense(hidden)-BN-ReLU-Dense(output_dim), with PyTorch's batch
    normalisation. ``init="torch"``: ``nn.Linear``'s draws; ``"predictor"``: weights from
    N(0, 0.01^2) and zero biases, as the LFSS authors' predictor.

    Example:

    >>> build_mlp(64, hidden=32, output_dim=16).output_shape
    (None, 16)
    """
    checks.choice("init", init, ("torch", "predictor"))

    def dense(units: int, fan_in: int):
        if init == "predictor":
            return layers.Dense(units, kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01))
        return _dense(units, fan_in, "torch")

    inputs = keras.Input(shape=(int(input_dim),))
    h = layers.ReLU()(_torch_batch_norm()(dense(hidden, int(input_dim))(inputs)))
    return keras.Model(inputs, dense(output_dim, hidden)(h), name=name)


DENSE_HIDDEN = (1024, 512, 256)
INITS = ("torch", "glorot")


def _dense(units: int, fan_in: int, init: str, name: str | None = None) -> layers.Dense:
    """A Dense layer initialised as PyTorch's ``nn.Linear`` (``init="torch"``: kernel and bias
    ``U(±1/sqrt(fan_in))``) or as Keras's default (``"glorot"``: Glorot-uniform kernel, zero bias)."""
    if init == "glorot":
        return layers.Dense(units, name=name)
    bound = 1.0 / math.sqrt(fan_in)
    return layers.Dense(
        units,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name=name,
    )


def _mlp(h, widths: tuple[int, ...], out: int, batch_norm: bool, init: str, out_name: str):
    """``widths`` hidden Dense layers (each with batch normalisation when asked, then ReLU), then a
    linear Dense of ``out`` units named ``out_name``."""
    fan_in = h.shape[-1]
    for units in widths:
        h = _dense(units, fan_in, init)(h)
        if batch_norm:  # PyTorch's BatchNorm1d defaults: running-average momentum 0.1, eps 1e-5
            h = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)(h)
        h, fan_in = layers.ReLU()(h), units
    return _dense(out, fan_in, init, name=out_name)(h)


def build_dense_autoencoder(
    input_shape: tuple[int, int, int],
    embedding_dim: int,
    hidden: tuple[int, ...] = DENSE_HIDDEN,
    batch_norm: bool = True,
    init: str = "torch",
    stats_shape: tuple[int, ...] | None = None,
) -> tuple[keras.Model, keras.Model]:
    """The feed-forward ``(encoder, decoder)`` of the BRB setup (the BRB authors'
    ``feedforward_large``): images are standardised by the ``standardise`` layer (fixed
    statistics of shape ``stats_shape``, one per channel by default) and flattened to ``d``
    features, then ``d-1024-512-256-e``, each hidden layer Dense-BatchNorm-ReLU, a linear
    embedding layer named ``embedding``; the decoder mirrors it back to the ``d`` standardised
    features with a linear output.

    Example:

    >>> encoder, decoder = build_dense_autoencoder((8, 8, 1), 10, hidden=(32, 16))
    >>> encoder.output_shape, decoder.output_shape
    ((None, 10), (None, 64))
    """
    shape = tuple(int(s) for s in input_shape)
    checks.choice("init", init, INITS)
    inputs = keras.Input(shape=shape, name="image")
    h = layers.Flatten()(Standardize(stats_shape or shape[-1:], name="standardise")(inputs))
    encoder = keras.Model(inputs, _mlp(h, hidden, embedding_dim, batch_norm, init, "embedding"), name="encoder")
    code = keras.Input(shape=(embedding_dim,), name="embedding")
    decoder = keras.Model(
        code, _mlp(code, tuple(reversed(hidden)), math.prod(shape), batch_norm, init, "reconstruction"), name="decoder"
    )
    return encoder, decoder
