"""Plain-PyTorch twins of the DECS computation, for speed comparisons only.

The same layers, shapes and arithmetic as ``deepstab.nn.networks`` and
``deepstab.methods.decs`` (NCHW layout, as PyTorch prefers), with no Keras in the way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TorchConvAutoencoder(nn.Module):
    def __init__(self, input_shape, embedding_dim=10, filters=(32, 64, 128, 256)):
        super().__init__()
        height, width, channels = input_shape
        extra_h, extra_w = -height % 8, -width % 8
        self.pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
        self.inner = ((height + extra_h) // 8, (width + extra_w) // 8)
        self.top = filters[3]
        blocks, previous = [], channels
        for f in filters[:3]:
            blocks += [
                nn.Conv2d(previous, f, 3, padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(f, eps=1e-3, momentum=0.01),
                nn.MaxPool2d(2),
            ]
            previous = f
        blocks += [
            nn.Conv2d(previous, filters[3], 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(filters[3], eps=1e-3, momentum=0.01),
            nn.Flatten(),
        ]
        self.encoder = nn.Sequential(*blocks, nn.Linear(filters[3] * self.inner[0] * self.inner[1], embedding_dim))
        self.expand = nn.Linear(embedding_dim, filters[3] * self.inner[0] * self.inner[1])
        blocks, previous = [], filters[3]
        for f in reversed(filters[:3]):
            blocks += [
                nn.ConvTranspose2d(previous, f, 3, stride=2, padding=1, output_padding=1),
                nn.ReLU(),
                nn.BatchNorm2d(f, eps=1e-3, momentum=0.01),
            ]
            previous = f
        self.decoder = nn.Sequential(*blocks, nn.ConvTranspose2d(previous, channels, 3, padding=1))

    def encode(self, x):
        return self.encoder(F.pad(x, self.pad))

    def decode(self, z):
        h = F.relu(self.expand(z)).view(-1, self.top, *self.inner)
        out = self.decoder(h)
        left, right, top, bottom = self.pad
        return out[:, :, top : out.shape[2] - bottom, left : out.shape[3] - right]


def augment(x, shift=0.1, rotation=10.0):
    n, c, h, w = x.shape
    angle = (torch.rand(n) * 2 - 1) * rotation * math.pi / 180
    shifts = (torch.rand(n, 2) * 2 - 1) * 2 * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin * h / w, shifts[:, 0]], 1), torch.stack([sin * w / h, cos, shifts[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def otsu(values, nbins=1000):
    flat = values.detach().reshape(-1)
    index = torch.clamp((flat * nbins).floor().long(), 0, nbins - 1)
    hist = torch.bincount(index, minlength=nbins).float()
    centers = (torch.arange(nbins, dtype=torch.float32) + 0.5) / nbins
    w1, w2 = torch.cumsum(hist, 0), torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])
    mass = hist * centers
    m1 = torch.cumsum(mass, 0) / w1.clamp_min(1e-12)
    m2 = torch.flip(torch.cumsum(torch.flip(mass, [0]), 0), [0]) / w2.clamp_min(1e-12)
    return centers[torch.argmax(w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2)]


def student_t(z, centroids, alpha=1.0):
    kernel = (1 + torch.cdist(z, centroids) ** 2 / alpha) ** (-(alpha + 1) / 2)
    return kernel / kernel.sum(1, keepdim=True)


def decs_paper_loss(q, t, lam=0.8):
    scale = torch.where(q < t, t, 1 - t)
    f = ((q - t).abs() / scale) ** 2
    s = f.mean(1) - lam * f.var(1, unbiased=False)
    return 1 - s.mean()
