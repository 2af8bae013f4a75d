"""DM's memory does not grow with the class count, and its images equal the reference's single backward.

The reference DM (DC/DSA/DM's ``main_DM.py``, ConvNet branch) sums one term per class and calls
``backward`` once, so every class's graph is alive at once. ``distill_dm`` back-propagates each class's
term as soon as it is computed; the gradient is the same sum, so the images must match.
"""

from __future__ import annotations

import weakref

import torch

from pipeline.config import DMConfig
from pipeline.core.pixels import normalize
from pipeline.diver.dm import distill_dm
from tuning.augment import DSA
from tuning.convnet import ConvNet


def _real_set(classes: int, per_class: int = 5, size: int = 16,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (classes * per_class, 3, size, size), generator=g, dtype=torch.uint8)
    return x, torch.arange(classes).repeat_interleave(per_class)


def _joint_backward_dm(images_u8, labels, num_classes, ipc, cfg, mean, std) -> torch.Tensor:
    """The reference's order of draws and its one backward over the summed loss (the code before this
    change)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    real = lambda idx: normalize(images_u8[idx].float() / 255.0, mean, std)
    picks = []
    for idx in by_class:
        order = idx[torch.randperm(len(idx), generator=gen)]
        picks.append(order[torch.arange(ipc) % len(order)])
    syn = real(torch.cat(picks)).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img, momentum=0.5)
    dsa = DSA() if cfg.dsa else None
    _, ch, h, _ = images_u8.shape
    for _ in range(cfg.iterations):
        net_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(net_seed)
            net = ConvNet(ch, num_classes, width=cfg.net_width, depth=cfg.net_depth, im_size=h)
        net.requires_grad_(False)
        loss = torch.zeros(())
        for c, idx in enumerate(by_class):
            r = real(idx[torch.randperm(len(idx), generator=gen)[: cfg.batch_real]])
            s = syn[c * ipc:(c + 1) * ipc]
            if dsa is not None:
                seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
                r, s = dsa(r, seed), dsa(s, seed)
            loss = loss + ((net.embed(r).detach().mean(0) - net.embed(s).mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m, sd = torch.as_tensor(mean).view(1, -1, 1, 1), torch.as_tensor(std).view(1, -1, 1, 1)
    return (syn.detach() * sd + m).clamp(0, 1)


def test_per_class_backward_gives_the_joint_backward_images():
    x, y = _real_set(6)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    for dsa in (True, False):
        cfg = DMConfig(ipc=2, iterations=4, batch_real=3, net_width=8, seed=3, lr_img=5.0, dsa=dsa)
        got, labels, _ = distill_dm(x, y, 6, 2, cfg, mean, std, log=lambda _m: None)
        want = _joint_backward_dm(x, y, 6, 2, cfg, mean, std)
        start = _joint_backward_dm(x, y, 6, 2, cfg.model_copy(update={"lr_img": 0.0}), mean, std)
        assert (want - start).abs().max() > 1e-2  # the images did move, so equality means something
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert labels.tolist() == [c for c in range(6) for _ in range(2)]


class _Held:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class _SavedBytes:
    """Bytes of the tensors autograd keeps for backward, alive at once: now and at the peak."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor) -> object:
        n = t.numel() * t.element_size()
        holder = _Held(t)
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, n)
        return holder

    def _release(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def unpack(holder: _Held) -> torch.Tensor:
        return holder.tensor


def _peak_saved_bytes(classes: int) -> int:
    x, y = _real_set(classes, per_class=4)
    cfg = DMConfig(ipc=1, iterations=2, batch_real=4, net_width=8, seed=0, dsa=True)
    meter = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        distill_dm(x, y, classes, 1, cfg, [0.5] * 3, [0.25] * 3, log=lambda _m: None)
    return meter.peak


def test_dm_autograd_memory_does_not_grow_with_classes():
    small, large = _peak_saved_bytes(4), _peak_saved_bytes(32)
    assert small > 0
    assert large <= 1.05 * small, (small, large)  # one class's graph at a time, not K of them
