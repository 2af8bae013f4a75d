"""The SD fine-tune's data order, flips and gradient clipping (as diffusers' train_text_to_image.py)."""

from __future__ import annotations

import pytest
import torch


def _class_sorted_rows(classes: int = 4, per_class: int = 24) -> list[dict[str, str]]:
    """Rows as the scan lists them: class by class."""
    return [{"path": f"{c}/{i:03d}.png",
             "caption": f"class {c}"} for c in range(classes) for i in range(per_class)]


def _epoch_rows(rows, epoch: int, seed: int = 0) -> list[list[str]]:
    """The batches (paths) the loop's streaming path reads in one epoch from a Ray dataset of ``rows``."""
    import ray.data

    from tuning.finetune_sd import epoch_batches

    ds = ray.data.from_items(rows, override_num_blocks=4)
    ds.context.execution_options.preserve_order = True
    return [list(map(str, b["path"])) for b in epoch_batches(ds.iterator(), 8, seed, epoch, buffer_rows=32)]


def test_rows_are_reshuffled_every_epoch_and_batches_mix_classes(ray_local):
    from tuning.finetune_sd import shuffled_rows

    scan = _class_sorted_rows()
    rows = shuffled_rows(scan, seed=0)
    assert rows == shuffled_rows(scan, seed=0) and rows != shuffled_rows(scan, seed=1)
    e0, e1 = _epoch_rows(rows, 0), _epoch_rows(rows, 1)
    flat0, flat1 = [p for b in e0 for p in b], [p for b in e1 for p in b]
    assert sorted(flat0) == sorted(flat1) == sorted(r["path"] for r in scan)  # every row once per epoch
    assert flat0 != flat1  # a new order each epoch
    assert flat0 != sorted(flat0, key=lambda p: p.split("/")[0])  # not class by class
    classes_per_batch = [len({p.split("/")[0] for p in b}) for b in e0]
    assert min(classes_per_batch) >= 2 and max(classes_per_batch) >= 3  # scan order: 1 class per batch of 8
    assert _epoch_rows(rows, 0) == e0 and _epoch_rows(rows, 1) == e1  # deterministic for a fixed seed


def test_latent_cache_order_differs_per_epoch_and_is_seeded():
    from tuning.finetune_sd import data_generator

    perms = [torch.randperm(96, generator=data_generator(0, e)).tolist() for e in range(3)]
    assert perms[0] != perms[1] != perms[2]
    assert perms[1] == torch.randperm(96, generator=data_generator(0, 1)).tolist()
    assert torch.randperm(96, generator=data_generator(0, 0, rank=1)).tolist() != perms[0]


def test_random_flip_mirrors_a_known_image_in_some_epochs():
    from tuning.finetune_sd import apply_flip, data_generator, flip_mask

    img = torch.zeros(1, 3, 4, 4)
    img[..., 0] = 1.0  # a bright left column
    mirrored = []
    for epoch in range(8):
        out = apply_flip(img, flip_mask(1, data_generator(0, epoch), enabled=True))
        assert torch.equal(out, img) or torch.equal(out, img.flip(-1))
        mirrored.append(bool(out[0, 0, 0, -1] == 1.0))
    assert 0 < sum(mirrored) < 8
    again = [bool(apply_flip(img, flip_mask(1, data_generator(0, e),
                                            True))[0, 0, 0, -1] == 1.0) for e in range(8)]
    assert again == mirrored
    assert not flip_mask(64, data_generator(0, 0), enabled=False).any()


def _grad_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


@pytest.mark.parametrize("fp16_scaler", [False, True])
def test_gradient_norm_is_clipped_before_the_step(fp16_scaler):
    from tuning.finetune_sd import clip_gradients

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if fp16_scaler else None
    loss = (model(torch.randn(16, 8) * 100).pow(2)).mean()
    (scaler.scale(loss) if scaler else loss).backward()
    raw = _grad_norm(list(model.parameters())) / (1024.0 if scaler else 1.0)
    assert raw > 10
    before = clip_gradients(model.parameters(), opt, scaler, 1.0)
    assert before == pytest.approx(raw, rel=1e-4)
    assert _grad_norm(list(model.parameters())) == pytest.approx(1.0, rel=1e-4)
    if scaler:
        scaler.step(opt)  # the unscaled, clipped gradients step the optimizer
        scaler.update()
    assert clip_gradients(model.parameters(), opt, None, None) is None


def test_finetune_settings_default_to_the_authors_script_and_enter_the_stage_key():
    from pipeline.config import FinetuneConfig, config_from_dict

    ft = FinetuneConfig()
    assert ft.max_grad_norm == 1.0 and ft.random_flip is True and ft.shuffle_buffer_size > 0
    with pytest.raises(ValueError, match="max_grad_norm"):
        FinetuneConfig(max_grad_norm=0)

    from pipeline.edits import finetune as finetune_stage
    from pipeline.edits.state import config_value

    for key in ("max_grad_norm", "random_flip", "shuffle_buffer_size"):
        assert f"edits.finetune.{key}" in finetune_stage.DEPENDS_ON

    def finetune_key(**finetune):
        cfg = config_from_dict({"method": "edits", "edits": {"finetune": {"enabled": True, **finetune}}})
        return {dep: config_value(cfg, dep) for dep in finetune_stage.DEPENDS_ON if dep.startswith("edits.")}

    base = finetune_key()
    assert base["edits.finetune.max_grad_norm"] == 1.0 and base["edits.finetune.random_flip"] is True
    assert finetune_key(random_flip=False) != base and finetune_key(max_grad_norm=None) != base


def test_a_resumed_epoch_reads_the_batches_an_uninterrupted_one_would():
    """A checkpoint records the micro-batches of the epoch already trained on; the resume skips them but
    still draws their flips, so the rest of the epoch (order, flips) and each step's noise are unchanged."""
    from types import SimpleNamespace

    from tuning.finetune_sd import epoch_posteriors, step_generator

    g = torch.Generator().manual_seed(0)
    n = 10
    cache = (torch.rand(2, n, 4, 2, 2, generator=g), torch.rand(2, n, 4, 2, 2, generator=g),
             [f"c{i}" for i in range(n)])
    w = SimpleNamespace(config={"batch_size": 3, "seed": 5, "random_flip": True}, rank=0,
                        device=torch.device("cpu"))
    full = list(epoch_posteriors(w, None, cache, epoch=2))
    assert len(full) == 4  # 3 + 3 + 3 + 1
    for skip in range(5):
        rest = list(epoch_posteriors(w, None, cache, epoch=2, skip=skip))
        assert len(rest) == len(full) - skip
        for (m, s, c), (m0, s0, c0) in zip(rest, full[skip:]):
            assert torch.equal(m, m0) and torch.equal(s, s0) and c == c0
    draws = [torch.rand(3, generator=step_generator(5, 0, step)) for step in (0, 1, 1)]
    assert torch.equal(draws[1], draws[2]) and not torch.equal(draws[0], draws[1])
    assert not torch.equal(torch.rand(3, generator=step_generator(5, 1, 1)), draws[1])  # another worker
