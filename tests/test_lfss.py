"""LFSS: its losses against hand computations, the train step's bookkeeping, saving."""

import math

import keras
import numpy as np
import pytest

from deepstab.datasets.streaming import IndexedImages
from deepstab.errors import DeepstabError
from deepstab.io import load_model, save_model
from deepstab.methods.lfss import LFSSModel, WarmupCosine
from deepstab.methods.losses import byol_loss, cluster_centres, cluster_loss, info_nce, nt_xent, nt_xent_self
from deepstab.nn.networks import build_resnet

TINY = dict(width=0.0625, hidden=16, dim=8)


def np_(t):
    return keras.ops.convert_to_numpy(t)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def images():
    return np.random.default_rng(0).random((32, 16, 16, 3), dtype=np.float32)


def weights(model):
    return [np.array(np_(w.value)) for w in model.weights]


# ------------------------------------------------------------------ losses


def test_byol_loss_by_hand():
    p, t = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 3.0], [2.0, 2.0]])
    # cosines 0 and 1 -> (2 - 0 + 2 - 2) / 2
    assert float(np_(byol_loss(p, t))) == pytest.approx(1.0)


def test_nt_xent_by_hand():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    z = unit(np.concatenate([a, b]))
    sim = z @ z.T / 0.5
    expected = np.mean(
        [-sim[i, (i + 3) % 6] + np.log(sum(np.exp(sim[i, j]) for j in range(6) if j != i)) for i in range(6)]
    )
    assert float(np_(nt_xent(a, b, 0.5))) == pytest.approx(expected, rel=1e-5)
    # an invalid row is neither anchor nor negative: the same as dropping it
    valid = np.array([True, False, True])
    dropped = nt_xent(a[[0, 2]], b[[0, 2]], 0.5)
    assert float(np_(nt_xent(a, b, 0.5, valid=valid))) == pytest.approx(float(np_(dropped)), rel=1e-5)


def test_cluster_centres_and_loss_by_hand():
    z = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, -1.0]])
    labels, keep = np.array([0, 0, 1, 1]), np.array([True, True, True, False])
    centres, present = cluster_centres(z, labels, keep, 3)
    expected0 = unit(np.array([[0.5, 1.0]]))[0]  # the mean of the raw rows (1, 0) and (0, 2), normalised
    np.testing.assert_allclose(np_(centres)[0], expected0, atol=1e-6)
    np.testing.assert_allclose(np_(centres)[1], [0.6, 0.8], atol=1e-6)  # sample 3 is left out
    assert np_(present).tolist() == [True, True, False]
    zt = z[::-1].copy()
    ct, _ = cluster_centres(zt, labels, keep, 3)
    by_hand = nt_xent(np_(centres)[:2], np_(ct)[:2], 0.5)
    assert float(np_(cluster_loss(z, zt, labels, keep, 3, 0.5))) == pytest.approx(float(np_(by_hand)), rel=1e-5)


# The LFSS authors' computations (models/LFSS.py, models/util.py), written out in NumPy.


def authors_nt_xent_self(new, old, t=0.5):  # util.nt_xent_self(new, t, old)
    a, b = unit(new), unit(old)
    sim = np.exp(a @ b.T / t)
    pos = np.diag(sim)
    return np.mean(-np.log(pos / (sim.sum(1) - pos)))


def authors_nt_xent(x, y, t=0.5):  # util.nt_xent(x, t, y): positives in the denominator, 2B anchors
    out = unit(np.concatenate([x, y]))
    sim = np.exp(out @ out.T / t)
    n = len(x)
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        negatives = sum(sim[i, j] for j in range(2 * n) if j not in (i, partner))
        losses.append(-np.log(sim[i, partner] / (sim[i, partner] + negatives)))
    return np.mean(losses)


def authors_prt_loss(q, k, labels, n_clusters, t=0.5):  # LFSS.forward_prt_loss; label -1 = dropped
    present = [c for c in range(n_clusters) if (labels == c).any()]
    q_centres = np.stack([q[labels == c].mean(0) for c in present])
    k_centres = np.stack([k[labels == c].mean(0) for c in present])
    return authors_nt_xent(q_centres, k_centres, t)


def test_instance_loss_equals_the_authors_nt_xent_self():
    rng = np.random.default_rng(2)
    online, predecessor = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5))
    ours = float(np_(nt_xent_self(online, predecessor, 0.5)))
    assert ours == pytest.approx(authors_nt_xent_self(online, predecessor), rel=1e-5)


def test_cluster_loss_equals_the_authors_forward_prt_loss():
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(12, 4)) * rng.uniform(0.2, 5, (12, 1)), rng.normal(size=(12, 4))
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 0, 3, 3, 1, 0])
    keep = np.ones(12, bool)
    keep[[2, 8]] = False  # the least stable: the authors' label -1
    ours = float(np_(cluster_loss(q, k, labels, keep, 5, 0.5)))
    assert ours == pytest.approx(authors_prt_loss(q, k, np.where(keep, labels, -1), 5), rel=1e-5)


def test_self_distillation_averages_the_two_directions(images):
    model = LFSSModel((16, 16, 3), 2, sigma=0.0, **TINY)
    rng = np.random.default_rng(4)
    z1, z2, t1, t2 = (keras.ops.convert_to_tensor(rng.normal(size=(16, 8)).astype("float32")) for _ in range(4))
    p1, p2 = np_(model.predictor(z1, training=True)), np_(model.predictor(z2, training=True))

    def authors_noise_loss(p, k):  # LFSS.forward_noise_loss with sigma 0
        return np.mean(2 - 2 * np.sum(unit(p) * unit(np_(k)), axis=1))

    expected = 0.5 * (authors_noise_loss(p1, t2) + authors_noise_loss(p2, t1))
    assert float(np_(model._base_loss(z1, z2, t1, t2))) == pytest.approx(expected, rel=1e-4)


def test_learning_rate_is_the_authors_warm_up_and_cosine():
    schedule = WarmupCosine(0.05, steps_per_epoch=235, epochs=1000)

    def authors(n_iter):  # util.adjust_learning_rate with cosine_annealing_LR, warm-up 10, eta_min 0.5
        e = n_iter / 235 + 1
        if e < 10:
            return 0.05 * e / 10
        return 0.025 + 0.5 * (0.05 - 0.025) * (1 + math.cos((e - 10) * math.pi / 1000))

    for step in (0, 234, 2114, 2115, 117499, 234999):
        assert float(np_(schedule(step))) == pytest.approx(authors(step + 1), rel=1e-5)


def test_networks_are_initialised_and_padded_as_pytorch():
    import torch

    net = build_resnet((32, 32, 3), 18, width=0.25)
    conv = net.get_layer("s2b1_a_conv")  # 3x3, stride 2, kernel (out, in, kh, kw) as PyTorch's
    fan_out = 3 * 3 * conv.kernel.shape[0]
    assert np_(conv.kernel).std() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)  # kaiming_normal_ fan_out
    stem = net.get_layer("stem_conv")  # a fresh nn.Conv2d: kaiming_uniform_(a=sqrt(5)), bound 1/sqrt(fan_in)
    assert np.abs(np_(stem.kernel)).max() <= 1 / math.sqrt(3 * 3 * 3) < 1.05 * np.abs(np_(stem.kernel)).max()
    bn = net.get_layer("s2b1_a_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    x = np.random.default_rng(0).random((2, 16, 8, 8)).astype("float32")  # NCHW, the layer's layout
    ours = np_(conv(x))
    theirs = torch.nn.Conv2d(16, conv.filters, 3, 2, 1, bias=False)
    theirs.weight.data = torch.from_numpy(np_(conv.kernel))
    theirs = theirs(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)  # PyTorch's symmetric padding
    assert conv.kernel.value.is_contiguous()  # a strided kernel would be copied on every call
    conv.kernel.assign(np_(conv.kernel) * 0.5)  # what loading saved weights does
    assert conv.kernel.value.is_contiguous()
    model = LFSSModel((16, 16, 3), 2, **TINY)
    first, last = (layer for layer in model.predictor.layers if isinstance(layer, keras.layers.Dense))
    assert np_(first.kernel).std() == pytest.approx(0.01, rel=0.2) and not np_(last.bias).any()


def test_info_nce_by_hand():
    q, k, queue = np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]]), np.array([[0.0, 1.0], [-1.0, 0.0]])
    logits = np.array([1 / math.sqrt(2), 0.0, -1.0]) / 0.2
    expected = -logits[0] + np.log(np.exp(logits).sum())
    assert float(np_(info_nce(q, k, queue, 0.2))) == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------------- networks


def test_resnet_stems_follow_the_input_size():
    small = build_resnet((32, 32, 3), 18, width=0.125)
    large = build_resnet((96, 96, 3), 18, width=0.125)
    assert not any("MaxPooling" in type(layer).__name__ for layer in small.layers)
    assert any("MaxPooling" in type(layer).__name__ for layer in large.layers)
    assert build_resnet((32, 32, 3), 50, width=0.125).output_shape == (None, 256)  # bottleneck: 4x


# ------------------------------------------------------------ train step


def _step(model, x):
    model.train_step((keras.ops.convert_to_tensor(x), np.arange(len(x))))


def test_gradients_reach_only_online_and_predictor(images):
    model = LFSSModel((16, 16, 3), 2, momentum=1.0, eta=0, **TINY)
    model.compile()
    online, predictor = weights(model.online), weights(model.predictor)
    target, predecessor = weights(model.target), weights(model.predecessor)
    _step(model, images[:16])
    trainable = [w.trainable for w in model.online.weights]
    pairs = [(a, b) for a, b, t in zip(target, weights(model.target), trainable) if t]
    assert all(np.allclose(a, b) for a, b in pairs)  # momentum 1: the EMA leaves the weights alone
    moving = [(a, b) for a, b, t in zip(target, weights(model.target), trainable) if not t]
    assert not all(np.allclose(a, b) for a, b in moving)  # the target's own batch-norm statistics move
    assert all(np.allclose(a, b) for a, b in zip(predecessor, weights(model.predecessor)))
    assert all(w.value.grad is None for w in model.target.weights + model.predecessor.weights)
    assert not all(np.allclose(a, b) for a, b in zip(online, weights(model.online)))
    assert not all(np.allclose(a, b) for a, b in zip(predictor, weights(model.predictor)))


def test_loss_terms_are_what_the_step_trains_on(images):
    """``loss_terms`` (what bench/lfss_terms.py measures) gives the terms a step of the same
    model, in the same state, logs; each stability term reaches the online network."""
    import torch

    model, twin = (LFSSModel((16, 16, 3), 2, seed=3, **TINY) for _ in range(2))
    for m in (model, twin):
        m.compile()
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        m.refresh_pseudo_labels(images)  # L_C on
    index = np.arange(16)
    l_s, l_i, l_c = twin.loss_terms(keras.ops.convert_to_tensor(images[:16]), torch.as_tensor(index))
    model.train_step((keras.ops.convert_to_tensor(images[:16]), index))
    logged = {name: float(np_(tracker.result())) for name, tracker in model.loss_trackers.items()}
    assert [float(np_(t)) for t in (l_s, l_i, l_c)] == pytest.approx([logged["l_s"], logged["l_i"], logged["l_c"]])
    assert logged["l_i"] > 0 and logged["l_c"] > 0
    kernel = twin.online.trainable_weights[0].value
    for term in (l_i, l_c):
        (grad,) = torch.autograd.grad(term, [kernel], retain_graph=True)
        assert float(grad.norm()) > 0


def test_ema_update_matches_its_formula(images):
    model = LFSSModel((16, 16, 3), 2, momentum=0.9, **TINY)
    model.compile()
    _step(model, images[:16])  # the target now differs from the online network
    before = weights(model.target)
    _step(model, images[16:])
    online = weights(model.online)
    for b, o, after, w in zip(before, online, weights(model.target), model.online.weights):
        if w.trainable:  # the EMA averages the trainable weights (the authors' parameters)
            np.testing.assert_allclose(after, 0.9 * b + 0.1 * o, rtol=1e-5, atol=1e-6)


def test_predecessor_is_last_epochs_target_and_cluster_loss_starts_after_eta(images):
    model = LFSSModel((16, 16, 3), 2, eta=2, **TINY)
    model.compile()
    target_at_end, predecessor_during = {}, {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            predecessor_during[epoch] = weights(model.predecessor)

        def on_epoch_end(self, epoch, logs=None):
            target_at_end[epoch] = weights(model.target)

    history = model.fit(images, epochs=3, batch_size=16, verbose=0, callbacks=[Probe()])
    for epoch in (0, 1):
        pairs = zip(predecessor_during[epoch + 1], target_at_end[epoch])
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert not all(np.array_equal(a, b) for a, b in zip(target_at_end[0], target_at_end[1]))
    l_c = history.history["l_c"]
    assert l_c[0] == 0.0 and l_c[1] == 0.0 and l_c[2] > 0.0  # L_C only after η = 2 epochs
    assert "mean_stability" in history.history


def test_delta_drops_exactly_the_least_stable_share(images):
    model = LFSSModel((16, 16, 3), 2, delta=0.25, **TINY)
    model.compile()
    _step(model, images[:16])  # the target moves away from the predecessor
    stability = model.refresh_pseudo_labels(images)
    keep = np_(model.keep).astype(bool)
    assert keep.sum() == 32 - 8
    assert stability[~keep].max() <= stability[keep].min()
    assert set(np_(model.pseudo_labels).tolist()) <= {0, 1}


@pytest.mark.parametrize("base", ["simclr", "moco"])
def test_other_bases_train(images, base):
    model = LFSSModel((16, 16, 3), 2, base=base, eta=1, queue_size=32, **TINY)
    model.compile()
    history = model.fit(images, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["l_c"][1] > 0
    assert model.predictor is None


def test_no_stability_switches_the_extra_losses_off(images):
    model = LFSSModel((16, 16, 3), 2, stability=False, eta=0, **TINY)
    model.compile()
    history = model.fit(images, epochs=1, batch_size=16, verbose=0)
    assert history.history["l_i"] == [0.0] and history.history["l_c"] == [0.0]


def test_save_load_round_trip(images, tmp_path):
    model = LFSSModel((16, 16, 3), 2, eta=1, **TINY)
    model.compile()
    model.fit(images, epochs=1, batch_size=16, verbose=0)
    path = save_model(model, tmp_path / "lfss.keras")
    loaded = load_model(path, expect=LFSSModel)
    np.testing.assert_allclose(loaded.embed(images), model.embed(images), rtol=1e-5, atol=1e-6)
    assert loaded.get_config()["eta"] == 1 and loaded.base == "byol"


def test_trains_on_uint8_images_memory_mapped_from_disk(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    on_disk = np.load(tmp_path / "x.npy", mmap_mode="r")
    batches = IndexedImages(on_disk, 8, seed=0)
    batch, index = batches[0]
    assert batch.dtype == np.float32 and len(index) == 8
    np.testing.assert_allclose(batch, pixels[index] / 255.0, rtol=1e-6)
    model = LFSSModel((16, 16, 3), 2, eta=1, **TINY)
    model.compile()
    history = model.fit(batches, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and model.cluster_active
    np.testing.assert_allclose(model.embed(on_disk), model.embed(pixels / np.float32(255)), rtol=1e-5, atol=1e-6)


def test_bad_arguments_and_inputs(images):
    with pytest.raises(DeepstabError, match="base must be one of"):
        LFSSModel((16, 16, 3), 2, base="swav", **TINY)
    with pytest.raises(DeepstabError, match="delta"):
        LFSSModel((16, 16, 3), 2, delta=1.5, **TINY)
    model = LFSSModel((16, 16, 3), 2, **TINY)
    model.compile()
    with pytest.raises(DeepstabError, match="needs images"):
        model.fit(images[..., :1], epochs=1)


def authors_cosine_kmeans(x, k, random_state=0, n_init=10, max_iter=300, tol=1e-4):
    """torch_clustering.PyTorchKMeans(metric='cosine') of the LFSS authors' code, on one CPU process."""
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(x, dtype=torch.float64)

    def dist(a, b):
        return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()

    def predict(c):
        inertia, lab = dist(x, c).min(1)
        return lab, inertia.sum()

    def kpp(seed):
        g = torch.Generator().manual_seed(seed)
        n, trials = len(x), 2 + int(np.log(k))
        cid = torch.randint(n, (1,), generator=g)
        cs, closest = [x[cid][0]], dist(x[cid], x)[0]
        pot = closest.sum()
        for _ in range(1, k):
            r = torch.rand(trials, generator=g, dtype=torch.float64) * pot
            cand = torch.searchsorted(torch.cumsum(closest, 0), r).clamp(max=n - 1)
            dc = torch.minimum(closest, dist(x[cand], x))
            pots = dc.sum(1)
            best = torch.argmin(pots)
            pot, closest = pots[best], dc[best]
            cs.append(x[cand[best]])
        return torch.stack(cs)

    tol_abs = torch.mean(torch.var(x, dim=0)) * tol
    best_inertia, best_labels = float("inf"), None
    for r in range(n_init):
        old_state = kpp(random_state + r)
        old_labels, _ = predict(old_state)
        for _ in range(max_iter):
            counts = torch.zeros(k, dtype=x.dtype) + 1e-6
            cls, cnt = torch.unique(old_labels, return_counts=True)
            counts[cls] = cnt.to(x.dtype)
            state = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, old_labels, x) / counts[:, None]
            labels, inertia = predict(state)
            if inertia < best_inertia:
                best_inertia, best_labels = inertia, labels
            if torch.equal(labels, old_labels):
                break
            shift = (1 - (F.normalize(old_state, dim=1) * F.normalize(state, dim=1)).sum(1)).sum()
            if shift <= tol_abs:
                break
            old_labels, old_state = labels.clone(), state
    return best_labels.numpy()


def test_pseudo_labels_are_the_authors_cosine_kmeans():
    from deepstab.nn.kmeans import cosine_kmeans

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 6))
    z = centres[rng.integers(0, 4, 300)] * rng.uniform(0.3, 3, (300, 1)) + rng.normal(size=(300, 6))
    for seed in (0, 1824):
        np.testing.assert_array_equal(cosine_kmeans(z, 4, seed=seed), authors_cosine_kmeans(z, 4, seed))


def test_sgd_has_pytorchs_momentum_under_a_changing_learning_rate():
    import torch

    from deepstab.nn.optimizers import SGD

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0, 1], [0.1, 0.05, 0.01])  # steps 0, 1, 2
    ours = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer = SGD(schedule, momentum=0.9)
    theirs = torch.tensor([1.0, -2.0], requires_grad=True)
    reference = torch.optim.SGD([theirs], lr=0.1, momentum=0.9)
    for step, lr in enumerate((0.1, 0.05, 0.01)):
        grad = np.array([0.5, 1.5], "float32") * (step + 1)
        optimizer.apply([keras.ops.convert_to_tensor(grad)], [ours])
        reference.param_groups[0]["lr"] = lr
        theirs.grad = torch.from_numpy(grad)
        reference.step()
    np.testing.assert_allclose(np_(ours), theirs.detach().numpy(), rtol=1e-6)


def test_the_step_calls_compute_what_keras_calls_compute(images):
    """The step runs each network through graph_call: the same outputs and moving statistics as
    Keras calls, for the online network, the EMA target ("track") and the predecessor ("batch")."""
    from deepstab.methods.lfss import _per_view

    model = LFSSModel((16, 16, 3), 2, **TINY)
    twin = LFSSModel((16, 16, 3), 2, **TINY)
    twin.set_weights(model.get_weights())
    x1, x2 = images[:8], images[8:16]
    for network, other in (
        (model.online, twin.online),
        (model.target, twin.target),
        (model.predecessor, twin.predecessor),
    ):
        separate = [np_(network(x, training=True)) for x in (x1, x2)]
        joint = [np_(z) for z in _per_view(other, x1, x2)]
        for a, b in zip(separate, joint):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(model.weights, twin.weights):  # the moving statistics too (online and target track them)
        np.testing.assert_allclose(np_(a), np_(b), rtol=1e-5, atol=1e-6)
