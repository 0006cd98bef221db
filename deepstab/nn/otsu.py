"""Otsu's threshold in ``keras.ops`` (DECS §3.3, the threshold ``t`` of Eqs. 6-8).

The same algorithm as ``skimage.filters.threshold_otsu``: a histogram with
``nbins`` bins, the between-class variance for every cut between bins, and the
centre of the bin that maximises it.

Example:

>>> import numpy as np
>>> from deepstab.nn.otsu import otsu_threshold
>>> q = np.array([0.01, 0.02, 0.03, 0.9, 0.95, 0.97], dtype="float32")
>>> round(float(otsu_threshold(q, nbins=10, value_range=(0.0, 1.0))), 3)  # values above it are "high"
0.05
"""

from __future__ import annotations

from keras import ops

from deepstab.nn.constants import like


def otsu_threshold(values, nbins: int = 1000, value_range: tuple[float, float] | None = None):
    """Otsu's threshold of ``values`` (any shape), as a scalar tensor without gradient.

    Args:
        values: tensor of values to threshold.
        nbins: number of histogram bins (the DECS authors' code uses 1000).
        value_range: the histogram's range; ``None`` uses the values' min and max
            exactly as scikit-image does, ``(0, 1)`` suits probabilities.
    """
    flat = ops.reshape(ops.stop_gradient(ops.convert_to_tensor(values, "float32")), (-1,))
    if value_range is None:
        lo, hi = ops.min(flat), ops.max(flat)
    else:
        lo, hi = ops.convert_to_tensor(value_range[0], "float32"), ops.convert_to_tensor(value_range[1], "float32")
    width = ops.maximum(hi - lo, like(1e-12, flat))
    index = ops.cast(ops.floor((flat - lo) / width * nbins), "int32")
    index = ops.clip(index, like(0, index), like(nbins - 1, index))
    hist = ops.cast(ops.bincount(index, minlength=nbins), "float32")
    centers = lo + (ops.cast(ops.arange(nbins), "float32") + 0.5) * width / nbins
    weight1 = ops.cumsum(hist)
    weight2 = ops.flip(ops.cumsum(ops.flip(hist, 0)), 0)
    mass = hist * centers
    mean1 = ops.cumsum(mass) / ops.maximum(weight1, 1e-12)
    mean2 = ops.flip(ops.cumsum(ops.flip(mass, 0)), 0) / ops.maximum(weight2, 1e-12)
    between = weight1[:-1] * weight2[1:] * ops.square(mean1[:-1] - mean2[1:])
    # Cuts inside a run of empty bins tie exactly in exact arithmetic; scikit-image takes the
    # first, right after a filled bin. Only those cuts compete, so a GPU's summation order,
    # which rounds the tied values differently, cannot move the threshold along the run.
    between = ops.where(hist[:-1] > 0, between, like(-1.0, between))
    return ops.take(centers, ops.argmax(between))
