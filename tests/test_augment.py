import numpy as np
from keras import ops

from deepstab.augment import RandomShiftRotation


def test_identity_outside_training_and_with_zero_ranges():
    x = np.random.default_rng(0).random((4, 12, 12, 1)).astype(np.float32)
    np.testing.assert_array_equal(ops.convert_to_numpy(RandomShiftRotation(seed=0)(x)), x)
    np.testing.assert_allclose(ops.convert_to_numpy(RandomShiftRotation(0.0, 0.0)(x, training=True)), x, atol=1e-6)


def test_shift_moves_content_within_the_range():
    x = np.zeros((64, 20, 20, 1), dtype=np.float32)
    x[:, 8:12, 8:12] = 1.0
    out = ops.convert_to_numpy(RandomShiftRotation(shift=0.1, rotation=0.0, seed=1)(x, training=True))
    rows = (out[..., 0] * np.arange(20)[None, :, None]).sum((1, 2)) / out[..., 0].sum((1, 2))
    moved = rows - 9.5
    assert np.abs(moved).max() <= 2.0 + 1e-3  # 0.1 of 20 pixels
    assert np.abs(moved).max() > 0.5  # something moved
    assert out.shape == x.shape


def test_rotation_keeps_mass_of_a_centred_disc():
    yy, xx = np.mgrid[:24, :24]
    disc = (((yy - 11.5) ** 2 + (xx - 11.5) ** 2) < 36).astype(np.float32)[None, ..., None]
    out = ops.convert_to_numpy(RandomShiftRotation(shift=0.0, rotation=45.0, seed=2)(np.repeat(disc, 8, 0), training=True))
    np.testing.assert_allclose(out.sum((1, 2, 3)), disc.sum(), rtol=0.03)


def test_colour_and_non_square_images_keep_their_shape():
    x = np.random.default_rng(3).random((2, 10, 30, 3)).astype(np.float32)
    assert ops.convert_to_numpy(RandomShiftRotation(seed=0)(x, training=True)).shape == x.shape
