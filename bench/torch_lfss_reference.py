"""A plain-PyTorch twin of one LFSS training step, for speed comparisons only.

The same computation as ``deepstab.methods.lfss.LFSSModel.train_step`` with the BYOL base, written
as the LFSS authors' code writes it: two SimCLR views (crop and flip by one ``grid_sample``, colour
jitter, grayscale), a ResNet-18 with the CIFAR stem and a projector for the online, target and
predecessor networks (each view its own forward pass, all in training mode), the predictor, the
losses L_S, L_I and L_C, SGD with momentum and weight decay, and the EMA of the parameters.
NCHW layout.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = self.b2(self.c2(h))
        return F.relu(h + (self.down(x) if self.down is not None else x))


def resnet18_cifar(channels: int = 3, width: float = 1.0) -> nn.Module:
    widths = [max(int(round(f * width)), 4) for f in (64, 128, 256, 512)]
    layers = [
        nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(),
    ]
    previous = widths[0]
    for stage, w in enumerate(widths):
        for block in range(2):
            layers.append(Block(previous, w, 2 if stage > 0 and block == 0 else 1))
            previous = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def mlp(din: int, hidden: int, dout: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(din, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, dout),
    )


def simclr_view(x: torch.Tensor) -> torch.Tensor:
    """Random resized crop + flip (one grid_sample), colour jitter with p=0.8, grayscale p=0.2."""
    n = x.shape[0]
    u = lambda lo, hi: torch.empty(n).uniform_(lo, hi)  # noqa: E731
    area, log_ratio = u(0.08, 1.0), u(math.log(3 / 4), math.log(4 / 3))
    w, h = (area * log_ratio.exp()).sqrt().clamp(max=1), (area / log_ratio.exp()).sqrt().clamp(max=1)
    cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
    sign = torch.where(u(0, 1) < 0.5, -1.0, 1.0)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([w * sign, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    x = F.grid_sample(
        x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border", align_corners=False
    )
    apply = (u(0, 1) < 0.8).view(-1, 1, 1, 1)
    gray = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
    factor = lambda s: torch.where(apply, u(1 - s, 1 + s).view(-1, 1, 1, 1), torch.ones(n, 1, 1, 1))  # noqa: E731
    x = (x * factor(0.4)).clamp(0, 1)
    mean = gray(x).mean((1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(0.4) + mean).clamp(0, 1)
    g = gray(x)
    x = ((x - g) * factor(0.4) + g).clamp(0, 1)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    angle = torch.where(apply.view(-1), u(-0.1, 0.1), zero) * 2 * math.pi
    c, s = angle.cos(), angle.sin()
    one = torch.ones(n)
    rot = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, c, -s], 1), torch.stack([zero, s, c], 1)], 1
    )
    matrix = torch.einsum("ij,njk,kl->nil", torch.linalg.inv(yiq), rot, yiq)
    x = torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)
    return torch.where((u(0, 1) < 0.2).view(-1, 1, 1, 1), gray(x).expand(-1, 3, -1, -1), x)


def nt_xent_self(online, predecessor, tau=0.5):
    a, b = F.normalize(online, dim=1), F.normalize(predecessor, dim=1)
    sim = torch.exp(a @ b.T / tau)
    positive = sim.diagonal()
    return (-torch.log(positive / (sim.sum(1) - positive))).mean()


def centres(z, labels, keep, k):
    onehot = F.one_hot(labels, k).float() * keep.float()[:, None]
    counts = onehot.sum(0)
    return F.normalize(onehot.T @ z / counts.clamp(min=1)[:, None], dim=1), counts > 0


def cluster_loss(zo, zt, labels, keep, k, tau=0.5):
    co, present = centres(zo, labels, keep, k)
    ct, _ = centres(zt, labels, keep, k)
    z = F.normalize(torch.cat([co, ct]), dim=1)
    valid = torch.cat([present, present])
    logits = (z @ z.T / tau).masked_fill(torch.eye(2 * k, dtype=torch.bool) | ~valid[None], -1e9)
    losses = F.cross_entropy(logits, torch.cat([torch.arange(k) + k, torch.arange(k)]), reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1)


class TorchLFSS:
    """Online (backbone + projector), predictor, EMA target and predecessor; ``step`` is one iteration."""

    def __init__(self, width=1.0, hidden=4096, dim=256, k=10, lr=0.05, momentum=0.996, sigma=0.001, lam=0.1):
        backbone = resnet18_cifar(3, width)
        features = backbone(torch.zeros(2, 3, 32, 32)).shape[1]
        self.online = nn.Sequential(backbone, mlp(features, hidden, dim))
        self.predictor = mlp(dim, hidden, dim)
        self.target, self.predecessor = copy.deepcopy(self.online), copy.deepcopy(self.online)
        for p in list(self.target.parameters()) + list(self.predecessor.parameters()):
            p.requires_grad_(False)
        self.optimizer = torch.optim.SGD(
            [{"params": self.online.parameters()}, {"params": self.predictor.parameters(), "lr": 10 * lr}],
            lr=lr,
            momentum=0.9,
            weight_decay=5e-4,
        )
        self.k, self.m, self.sigma, self.lam = k, momentum, sigma, lam
        self.mean, self.std = (
            torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1),
            torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1),
        )

    def step(self, x, labels, keep):
        x1, x2 = (simclr_view(x) - self.mean) / self.std, (simclr_view(x) - self.mean) / self.std
        z1, z2 = self.online(x1), self.online(x2)
        with torch.no_grad():
            t1, t2 = self.target(x1), self.target(x2)
            p1, p2 = self.predecessor(x1), self.predecessor(x2)
        h1 = self.predictor(z1 + self.sigma * torch.randn_like(z1))
        h2 = self.predictor(z2 + self.sigma * torch.randn_like(z2))
        l_s = ((2 - 2 * F.cosine_similarity(h1, t2)).mean() + (2 - 2 * F.cosine_similarity(h2, t1)).mean()) / 2
        l_i = (nt_xent_self(z1, p1) + nt_xent_self(z2, p2)) / 2
        l_c = (cluster_loss(z1, t2, labels, keep, self.k) + cluster_loss(z2, t1, labels, keep, self.k)) / 2
        loss = l_s + self.lam * (l_i + l_c)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for t, o in zip(self.target.parameters(), self.online.parameters()):
                t.mul_(self.m).add_(o, alpha=1 - self.m)
        return loss
