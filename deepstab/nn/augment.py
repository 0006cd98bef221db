"""Augmentation layers (Keras preprocessing layers, active only with ``training=True``).

``RandomShiftRotation``: DECS's shifts and rotations. ``SimCLRAugment``: the SimCLR
pipeline LFSS trains with (LFSS §4.1, after SimCLR, Chen et al. 2020).

Keras's own ``RandomTranslation`` and ``RandomRotation`` warp images with a
generic ``map_coordinates`` on the torch backend: 100-200 ms for a batch of 256
16x16 images on 2 CPU cores, which would dominate DECS training. The layer here
draws the same random shifts and rotations with ``keras.random`` and applies
them in one ``grid_sample`` call (about 1 ms for the same batch).

``SimCLRAugment`` draws all of a call's random numbers in one ``keras.random.uniform``: every
draw with a seed generator reads the generator's state back to the host, which on a GPU waits
for the queued work.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import torch.nn.functional as F
from keras import ops

from deepstab import checks
from deepstab.errors import DeepstabError
from deepstab.nn.constants import like
from deepstab.precision import EXACT


@keras.saving.register_keras_serializable(package="deepstab")
class RandomShiftRotation(keras.layers.Layer):
    """Random shift and rotation of NHWC images, edges filled with the nearest pixel.

    DECS augmentation (as the authors' ``ImageDataGenerator``): shifts drawn
    uniformly up to ``shift`` of the width and height, rotations uniformly up
    to ``rotation`` degrees, bilinear interpolation.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> layer = RandomShiftRotation(shift=0.1, rotation=10.0, seed=0)
    >>> x = np.random.rand(4, 16, 16, 1).astype("float32")
    >>> tuple(layer(x, training=True).shape), bool(ops.all(ops.equal(layer(x), x)))
    ((4, 16, 16, 1), True)
    """

    def __init__(self, shift: float = 0.1, rotation: float = 10.0, seed: int | None = None, **kwargs):
        super().__init__(**{"dtype": EXACT, **kwargs})
        self.shift = checks.in_range("shift", shift, 0.0, 1.0, high_open=True)
        self.rotation = checks.in_range("rotation", rotation, 0.0, 180.0)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def transforms(self, n: int, height: int, width: int):
        """``(n, 2, 3)`` affine matrices in ``affine_grid``'s normalised coordinates."""
        # Two draws (angles, then shifts): the draw order fixes which views a seed gives, and
        # with it the documented DECS and DEC-family results.
        angle = keras.random.uniform((n,), -1.0, 1.0, seed=self.seed_generator) * self.rotation * math.pi / 180.0
        shifts = keras.random.uniform((n, 2), -2.0 * self.shift, 2.0 * self.shift, seed=self.seed_generator)
        cos, sin = ops.cos(angle), ops.sin(angle)
        row1 = ops.stack([cos, -sin * height / width, shifts[:, 0]], axis=1)
        row2 = ops.stack([sin * width / height, cos, shifts[:, 1]], axis=1)
        return ops.stack([row1, row2], axis=1)

    def call(self, x, training=False):
        if not training or (self.shift == 0.0 and self.rotation == 0.0):
            return x
        x = ops.convert_to_tensor(x)
        n, height, width, channels = x.shape
        theta = self.transforms(n, height, width)
        grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
        warped = F.grid_sample(x.permute(0, 3, 1, 2), grid, padding_mode="border", align_corners=False)
        return warped.permute(0, 2, 3, 1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "rotation": self.rotation, "seed": self.seed}


@keras.saving.register_keras_serializable(package="deepstab")
class RandomAffine(RandomShiftRotation):
    """Random rotation, shear along x and shift of NHWC images, as torchvision's ``RandomAffine``
    that the BRB authors' code applies to grey images (rotation ±16°, shifts up to 10% rounded
    to whole pixels, x-shear ±8°, nearest-neighbour sampling, zeros outside the image).

    Each image is mapped by ``p_in = M (p_out - t)`` with ``M`` the inverse of a rotation by
    ``θ ~ U(±rotation)`` after a shear by ``φ ~ U(±shear)``, and ``t`` the shift in pixels.

    Example:

    >>> import numpy as np
    >>> layer = RandomAffine(seed=0)
    >>> x = np.random.rand(4, 28, 28, 1).astype("float32")
    >>> view = keras.ops.convert_to_numpy(layer(x, training=True))
    >>> view.shape, bool(np.isin(view, np.append(x, 0.0)).all())  # nearest sampling: old pixels or 0
    ((4, 28, 28, 1), True)
    """

    def __init__(
        self,
        shift: float = 0.1,
        rotation: float = 16.0,
        shear: float = 8.0,
        whole_pixels: bool = True,
        interpolation: str = "nearest",
        fill: str = "zeros",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(shift, rotation, seed, **kwargs)
        self.shear = checks.in_range("shear", shear, 0.0, 89.0)
        self.whole_pixels = bool(whole_pixels)
        self.interpolation = checks.choice("interpolation", interpolation, ("nearest", "bilinear"))
        self.fill = checks.choice("fill", fill, ("zeros", "border"))

    def transforms(self, n: int, height: int, width: int):
        u = keras.random.uniform((4, n), -1.0, 1.0, seed=self.seed_generator)  # one draw: one host read
        degrees = math.pi / 180.0
        angle, shear = u[0] * self.rotation * degrees, u[3] * self.shear * degrees
        tx, ty = u[1] * self.shift * width, u[2] * self.shift * height  # in pixels
        if self.whole_pixels:
            tx, ty = ops.round(tx), ops.round(ty)
        cos, sin, tan = ops.cos(angle), ops.sin(angle), ops.tan(shear)
        # M = (shear φ along x)^-1 (rotation θ)^-1, in pixel units about the image centre
        m00, m01 = cos - tan * sin, sin + tan * cos
        m10, m11 = -sin, cos
        half_w, half_h = width / 2.0, height / 2.0
        row1 = ops.stack([m00, m01 * half_h / half_w, -(m00 * tx + m01 * ty) / half_w], axis=1)
        row2 = ops.stack([m10 * half_w / half_h, m11, -(m10 * tx + m11 * ty) / half_h], axis=1)
        return ops.stack([row1, row2], axis=1)

    def call(self, x, training=False):
        if not training or (self.shift == 0.0 and self.rotation == 0.0 and self.shear == 0.0):
            return x
        x = ops.convert_to_tensor(x)
        n, height, width, channels = x.shape
        grid = F.affine_grid(self.transforms(n, height, width), [n, channels, height, width], align_corners=False)
        warped = F.grid_sample(
            x.permute(0, 3, 1, 2), grid, mode=self.interpolation, padding_mode=self.fill, align_corners=False
        )
        return warped.permute(0, 2, 3, 1)

    def get_config(self):
        return {
            **super().get_config(),
            "shear": self.shear,
            "whole_pixels": self.whole_pixels,
            "interpolation": self.interpolation,
            "fill": self.fill,
        }


GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _gray(x):
    """(N, C, H, W) -> (N, 1, H, W) luma (the image itself when C == 1)."""
    if x.shape[1] == 1:
        return x
    w = ops.reshape(like(GRAY_WEIGHTS, x), (1, 3, 1, 1))
    return ops.sum(x * w, axis=1, keepdims=True)


def _unit(x):
    """``x`` clipped to [0, 1]."""
    return ops.clip(x, like(0.0, x), like(1.0, x))


def _per_sample(values, apply):
    """Broadcast (N,) draws over (N, C, H, W), and keep 1 where ``apply`` is False."""
    return ops.reshape(ops.where(apply, values, ops.ones_like(values)), (-1, 1, 1, 1))


@keras.saving.register_keras_serializable(package="deepstab")
class SimCLRAugment(keras.layers.Layer):
    """SimCLR augmentation of NHWC images in [0, 1], one independent draw per sample.

    Random resized crop (area ``crop_scale``, aspect ratio 3/4 to 4/3, bilinear,
    resized back to the input size), horizontal flip with p = 0.5, colour jitter
    (brightness, contrast, saturation, hue of ``jitter``) with probability ``jitter_p``,
    and grayscale with probability ``grayscale_p`` (Chen et al. 2020; LFSS §4.1).
    The crop and flip are one ``grid_sample``. Differences from torchvision: the crop
    box is clipped to the image instead of re-drawn, the jitter runs in a fixed order,
    and hue is rotated in YIQ space. Colour steps are skipped for one-channel images.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> layer = SimCLRAugment(seed=0)
    >>> x = np.random.rand(8, 32, 32, 3).astype("float32")
    >>> view = layer(x, training=True)
    >>> tuple(view.shape), bool(ops.all(ops.equal(layer(x), x))), bool(ops.all(ops.equal(view, x)))
    ((8, 32, 32, 3), True, False)
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        flip: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**{"dtype": EXACT, **kwargs})
        low, high = (checks.in_range("crop_scale", v, 0.0, 1.0) for v in crop_scale)
        if not 0.0 < low <= high:
            raise DeepstabError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}.")
        if len(jitter) != 4:
            raise DeepstabError(f"jitter must be (brightness, contrast, saturation, hue), got {jitter!r}.")
        self.jitter = tuple(checks.non_negative("jitter", v) for v in jitter[:3]) + (
            checks.in_range("hue", jitter[3], 0.0, 0.5),
        )
        self.crop_scale = (low, high)
        self.jitter_p = checks.in_range("jitter_p", jitter_p, 0.0, 1.0)
        self.grayscale_p = checks.in_range("grayscale_p", grayscale_p, 0.0, 1.0)
        self.flip, self.seed = bool(flip), seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def _crop_and_flip(self, x, u):
        """``u``: five (N,) uniform [0, 1) draws (area, aspect ratio, centre x and y, flip)."""
        n, channels, height, width = x.shape
        low, high = self.crop_scale
        area = low + (high - low) * u[0]
        ratio = ops.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
        w, h = ops.sqrt(area * ratio), ops.sqrt(area / ratio)  # crop size as a share of each side
        w, h = ops.minimum(w, like(1.0, w)), ops.minimum(h, like(1.0, h))
        cx, cy = (2.0 * u[2] - 1.0) * (1.0 - w), (2.0 * u[3] - 1.0) * (1.0 - h)
        sign = ops.where(u[4] < 0.5, like(-1.0, w), like(1.0, w)) if self.flip else ops.ones_like(w)
        zero = ops.zeros_like(w)
        theta = ops.stack([ops.stack([w * sign, zero, cx], axis=1), ops.stack([zero, h, cy], axis=1)], axis=1)
        grid = F.affine_grid(theta, [n, channels, height, width], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour(self, x, u):
        """``u``: six (N,) uniform [0, 1) draws (jitter or not, brightness, contrast,
        saturation, hue, grayscale or not)."""
        brightness, contrast, saturation, hue = self.jitter
        apply = u[0] < self.jitter_p

        def factor(strength, draw):
            return _per_sample(1.0 + strength * (2.0 * draw - 1.0), apply)

        x = _unit(x * factor(brightness, u[1]))
        mean = ops.mean(_gray(x), axis=(1, 2, 3), keepdims=True)
        x = _unit((x - mean) * factor(contrast, u[2]) + mean)
        if x.shape[1] != 3:
            return x
        gray = _gray(x)
        x = _unit((x - gray) * factor(saturation, u[3]) + gray)
        angle = hue * (2.0 * u[4] - 1.0)
        x = _rotate_hue(x, ops.where(apply, angle, ops.zeros_like(angle)) * (2 * math.pi))
        to_gray = ops.reshape(u[5] < self.grayscale_p, (-1, 1, 1, 1))
        return ops.where(to_gray, ops.repeat(_gray(x), 3, axis=1), x)

    def call(self, x, training=False):
        if not training:
            return x
        x = ops.transpose(ops.convert_to_tensor(x), (0, 3, 1, 2))
        u = keras.random.uniform((11, x.shape[0]), seed=self.seed_generator)
        x = self._colour(self._crop_and_flip(x, u[:5]), u[5:])
        return ops.transpose(x, (0, 2, 3, 1))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "crop_scale": self.crop_scale,
            "jitter": self.jitter,
            "jitter_p": self.jitter_p,
            "grayscale_p": self.grayscale_p,
            "flip": self.flip,
            "seed": self.seed,
        }


_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_YIQ_TO_RGB = tuple(tuple(float(v) for v in row) for row in np.linalg.inv(np.array(_RGB_TO_YIQ)))


def _rotate_hue(x, angle):
    """Rotate the hue of (N, 3, H, W) RGB images by ``angle`` radians (per sample) in YIQ space."""
    to_yiq, to_rgb = like(_RGB_TO_YIQ, x), like(_YIQ_TO_RGB, x)
    cos, sin = ops.cos(angle), ops.sin(angle)
    one, zero = ops.ones_like(cos), ops.zeros_like(cos)
    rotation = ops.stack(
        [ops.stack([one, zero, zero], 1), ops.stack([zero, cos, -sin], 1), ops.stack([zero, sin, cos], 1)], 1
    )  # (N, 3, 3)
    matrix = ops.einsum("ij,njk,kl->nil", to_rgb, rotation, to_yiq)
    return _unit(ops.einsum("nij,njhw->nihw", matrix, x))
