"""Plain-PyTorch twins of deepstab's DEC, IDEC and DCN clustering steps, for speed comparisons
only: the same computation as ``deepstab.methods.dec`` with its defaults (the BRB authors'
protocol), written as one would in PyTorch.

Per step: the batch resized to 28x28 (bilinear), a random affine view (rotation, whole-pixel
shift, x-shear; nearest sampling, zero fill), per-channel z-score, the feed-forward autoencoder
``d-1024-512-256-K`` (Linear-BatchNorm-ReLU) on the clean and the augmented view, the method's
loss, gradients clipped at a global norm of 500 over the autoencoder, and an Adam update. DCN
adds its epoch-end centroid pass over the clean images in inference mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class TorchDenseAutoencoder(nn.Module):
    def __init__(self, side: int = 28, channels: int = 1, embedding: int = 10, hidden=(1024, 512, 256)):
        super().__init__()
        self.side, d = side, side * side * channels
        self.encoder = mlp([d, *hidden, embedding])
        self.decoder = mlp([embedding, *reversed(hidden), d])
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def inputs(self, x):  # NCHW in [0, 1] -> resized
        return F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)

    def flat(self, x):
        return ((x - self.mean) / self.std).flatten(1)


def affine_view(x, shift=0.1, rotation=16.0, shear=8.0):
    n, c, h, w = x.shape
    u = torch.rand(4, n, device=x.device) * 2 - 1
    angle, sh = u[0] * rotation * math.pi / 180, u[3] * shear * math.pi / 180
    tx, ty = torch.round(u[1] * shift * w), torch.round(u[2] * shift * h)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(sh)
    m00, m01, m10, m11 = cos - tan * sin, sin + tan * cos, -sin, cos
    theta = torch.stack(
        [
            torch.stack([m00, m01 * h / w, -(m00 * tx + m01 * ty) / (w / 2)], 1),
            torch.stack([m10 * w / h, m11, -(m10 * tx + m11 * ty) / (h / 2)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def sqdist(z, c):
    return ((z[:, None, :] - c[None]) ** 2).sum(-1)


def student_t(z, c):
    q = 1.0 / (1.0 + sqdist(z, c))
    return q / q.sum(1, keepdim=True)


def dec_ce(p, q):
    return -(p * torch.log(q + 1e-8)).sum(1).mean()


def target(q):
    w = q**2 / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


class TorchMethod:
    """One method's clustering stage on a fixed image tensor (NCHW, on the device)."""

    def __init__(self, method: str, k: int = 10, side: int = 28, channels: int = 1):
        self.method, self.k = method, k
        self.ae = TorchDenseAutoencoder(side, channels, k)
        self.centroids = torch.randn(k, k) * 0.1
        params = list(self.ae.parameters())
        if method != "dcn":
            self.centroids = nn.Parameter(self.centroids)
            params.append(self.centroids)
        self.optimizer = torch.optim.Adam(params, 1e-3)

    def to(self, device):
        self.ae.to(device)
        self.centroids.data = self.centroids.data.to(device)
        return self

    def step(self, xb):
        ae = self.ae
        ae.train()
        clean = ae.inputs(xb)
        augmented = affine_view(clean)
        if self.method == "dec":
            z_aug, z_clean = ae.encoder(ae.flat(augmented)), ae.encoder(ae.flat(clean))
            q_clean, q_aug = student_t(z_clean, self.centroids), student_t(z_aug, self.centroids)
            p = target(q_clean).detach()
            loss = (dec_ce(p, q_clean) + dec_ce(p, q_aug)) / 2
        else:
            flat = ae.flat(torch.cat([augmented, clean]))
            z = ae.encoder(flat)
            loss = F.mse_loss(ae.decoder(z), flat)
            n = len(xb)
            z_aug, z_clean = z[:n], z[n:]
            if self.method == "idec":
                q_clean, q_aug = student_t(z_clean, self.centroids), student_t(z_aug, self.centroids)
                p = target(q_clean).detach()
                loss = loss + 0.1 * (dec_ce(p, q_clean) + dec_ce(p, q_aug)) / 2
            else:
                a = F.one_hot(sqdist(z_clean, self.centroids).argmin(1).detach(), self.k).float()
                k_term = (sqdist(z_clean, self.centroids) * a).mean() + (sqdist(z_aug, self.centroids) * a).mean()
                loss = loss + 0.025 * k_term / 2
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 500.0)
        self.optimizer.step()

    @torch.no_grad()
    def centroid_pass(self, data, batch):
        self.ae.eval()
        order = torch.randperm(len(data), device="cpu")
        for i in range(0, len(data) - batch + 1, batch):
            z = self.ae.encoder(self.ae.flat(self.ae.inputs(data[order[i : i + batch]].to(self.centroids.device))))
            labels = sqdist(z, self.centroids).argmin(1)
            one_hot = F.one_hot(labels, self.k).float()
            n = one_hot.sum(0)
            means = (one_hot.T @ z) / n.clamp_min(1)[:, None]
            moved = self.centroids + (means - self.centroids) / 101.0
            self.centroids.copy_(torch.where(n[:, None] > 0, moved, self.centroids))
