import numpy as np
from keras import ops

from deepstab.nn.augment import RandomShiftRotation


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
    out = ops.convert_to_numpy(
        RandomShiftRotation(shift=0.0, rotation=45.0, seed=2)(np.repeat(disc, 8, 0), training=True)
    )
    np.testing.assert_allclose(out.sum((1, 2, 3)), disc.sum(), rtol=0.03)


def test_colour_and_non_square_images_keep_their_shape():
    x = np.random.default_rng(3).random((2, 10, 30, 3)).astype(np.float32)
    assert ops.convert_to_numpy(RandomShiftRotation(seed=0)(x, training=True)).shape == x.shape


def _simclr(x, **settings):
    from deepstab.nn.augment import SimCLRAugment

    return ops.convert_to_numpy(SimCLRAugment(seed=5, **settings)(x, training=True))


def _half_bright(n, size=32):
    x = np.zeros((n, size, size, 3), dtype=np.float32)
    x[:, :, size // 2 :] = 1.0  # right half bright: where a crop lies shows in its brightness
    return x


def test_simclr_flips_half_the_images():
    out = _simclr(_half_bright(2000), crop_scale=(0.9, 1.0), jitter_p=0.0, grayscale_p=0.0)
    left, right = out[:, :, :8].mean((1, 2, 3)), out[:, :, -8:].mean((1, 2, 3))
    flipped = (left > 0.9) & (right < 0.1)
    assert np.all(flipped | ((left < 0.1) & (right > 0.9)))  # large crops keep the outer quarters
    assert 0.45 < flipped.mean() < 0.55


def test_simclr_grayscale_and_jitter_happen_at_their_rates():
    x = np.broadcast_to(np.float32([0.2, 0.5, 0.8]), (2000, 8, 8, 3)).copy()  # no crop or flip changes it
    out = _simclr(x, jitter_p=0.0, grayscale_p=0.2)
    gray = np.abs(out[..., 0] - out[..., 2]).max((1, 2)) < 1e-6
    assert 0.17 < gray.mean() < 0.23
    np.testing.assert_allclose(out[~gray], x[~gray], atol=1e-5)
    jittered = np.abs(_simclr(x, jitter_p=0.8, grayscale_p=0.0) - x).max((1, 2, 3)) > 1e-4
    assert 0.77 < jittered.mean() < 0.83


def test_simclr_crops_cover_the_asked_share_of_the_image():
    x = _half_bright(500)
    small = _simclr(x, crop_scale=(0.08, 0.2), flip=False, jitter_p=0.0, grayscale_p=0.0)
    straddle = (small.min((1, 2, 3)) < 0.5) & (small.max((1, 2, 3)) > 0.5)
    assert 0.05 < straddle.mean() < 0.95  # small crops: some straddle the edge, many do not
    whole = _simclr(x, crop_scale=(1.0, 1.0), flip=False, jitter_p=0.0, grayscale_p=0.0)
    np.testing.assert_allclose(whole.mean((1, 2, 3)), 0.5, atol=0.1)  # all but an aspect-ratio trim
