"""Host-device synchronisation points per training step, counted on any machine (CPU too).

On a GPU, a training step runs fast only if Python can queue work ahead of the device. Two
things stop it: reading a device value on the host (``.item()``, ``float(t)``, ``bool(t)``,
``.numpy()``), and turning a Python number, tuple or NumPy array into a device tensor (a copy
from pageable host memory, which waits for all queued work). Keras's ops do the latter for
every plain number they are given. This script counts both kinds of events over one
epoch of each model's own ``fit`` (8 steps of tiny networks; the epoch-level work, such as
DEC's target refresh, is spread over the steps) and prints where they come from, so they can
be removed without a GPU at hand.

    python bench/sync_count.py                 # all models, per-step counts
    python bench/sync_count.py --model lfss --sources 15
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "torch")  # deepstab runs Keras on the torch backend

import keras
import numpy as np
import torch
from keras.src.backend.torch import core

import deepstab

READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class Counter:
    """Counts conversions of non-tensors to tensors and host reads of tensors, with their callers."""

    def __init__(self):
        self.active = False
        self.events: collections.Counter = collections.Counter()

    def note(self, kind: str) -> None:
        if not self.active:
            return
        frames = [
            f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename and "sync_count" not in f.filename
        ]
        ours = [f for f in frames if f.filename.startswith(ROOT)]
        where = ours[-1] if ours else frames[-1]
        self.events[
            (kind, f"{where.filename.replace(ROOT, '').split('site-packages/')[-1]}:{where.lineno} {where.name}")
        ] += 1

    def install(self) -> None:
        convert = core.convert_to_tensor

        def counted_convert(x, *args, **kwargs):
            if not isinstance(x, torch.Tensor) and not hasattr(x, "value"):
                self.note(f"to tensor ({type(x).__name__})")
            return convert(x, *args, **kwargs)

        for module in list(sys.modules.values()):
            if (
                module is not None
                and module.__name__.startswith("keras")
                and getattr(module, "convert_to_tensor", None) is convert
            ):
                module.convert_to_tensor = counted_convert
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted_read(tensor, *args, _original=original, _name=name, **kwargs):
                self.note(f"host read (.{_name})")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted_read)


def models():
    """(name, model, data for its fit, batch size, steps) of each trained model, tiny sizes."""
    from deepstab.datasets.streaming import IndexedImages
    from deepstab.methods.dec import DCN, DEC, IDEC
    from deepstab.methods.lfss import LFSSModel, lfss_optimizer

    rng = np.random.default_rng(0)
    batch, steps = 32, 8
    digits = rng.random((batch * steps, 16, 16, 1), dtype=np.float32)
    colour = rng.random((batch * steps, 32, 32, 3), dtype=np.float32)

    lfss = LFSSModel((32, 32, 3), 10, width=0.125, hidden=64, dim=32, eta=10**6, seed=0)
    lfss.set_cluster_state(np.arange(len(colour)) % 10, np.arange(len(colour)) % 10 != 0)  # L_C active
    lfss.use_stability = True
    lfss.compile(optimizer=lfss_optimizer(0.05, 100, 1000))
    yield "lfss", lfss, IndexedImages(colour, batch, seed=0), None, steps

    for name, cls in (("decs", deepstab.DECS), ("dec", DEC), ("idec", IDEC), ("dcn", DCN)):
        model = cls(10, digits.shape[1:])
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        yield name, model, digits, batch, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["lfss", "decs", "dec", "idec", "dcn"], help="one model only")
    parser.add_argument("--sources", type=int, default=0, help="print this many top sources per model")
    args = parser.parse_args()
    counter = Counter()
    counter.install()
    rows = []
    for name, model, data, batch, steps in models():
        if args.model and name != args.model:
            continue
        model.fit(data, batch_size=batch, epochs=1, verbose=0)  # builds, initialises, warms up
        counter.events.clear()
        counter.active = True
        model.fit(data, batch_size=batch, epochs=1, verbose=0)
        counter.active = False
        events = counter.events
        reads = sum(c for (kind, _), c in events.items() if kind.startswith("host read"))
        rows.append((name, (sum(events.values()) - reads) / steps, reads / steps))
        if args.sources:
            print(f"{name}: top sources per step")
            for (kind, where), count in events.most_common(args.sources):
                print(f"  {count / steps:6.1f}  {kind:<24} {where}")
    print(f"{'model':<8}{'to tensor/step':>16}{'host reads/step':>17}")
    for name, converts, reads in rows:
        print(f"{name:<8}{converts:>16.1f}{reads:>17.1f}")


if __name__ == "__main__":
    main()
