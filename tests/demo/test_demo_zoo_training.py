"""The demo zoo's one training loop: its step order, and every recipe's weights pinned to the old loops'.

The pinned sha256s were recorded from the hand-written loops each recipe had before ``train_steps``
(tiny settings, fixed seeds, 1 torch thread); the refactor reproduced every one bit for bit. On
another CPU kernel set or torch build, float sums may round differently, so there the weights'
fingerprints are compared with a tolerance instead.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from actors import shipped
from pipeline.demo.zoo import dit, models
from pipeline.demo.zoo.training import Ema, Progress, epoch_batches, lr_at, train_steps, warmup_cosine

# recorded with torch 2.13.0+cpu on AVX2 kernels
RECORDED_ON = ("2.13.0+cpu", "AVX2")
# name -> (sha256 of the weights, sum of their absolute values, final running loss)
PINNED = {
    "dit_vae": ("9bf73d497c14b4307483778514ce639710eaa5be38a026d15e3bcc31e5e29286", 6483.0777253000015, None),
    "dit": ("d81588fcaa0ff50672c55d6f9b046b199e4055d1a2096f45db0bd15ba36275b9", 56939.918277772515, None),
    "dit_no_variance": ("5fb93a9405023c9e47070c52e73f2ae70a0423940d22f6db11eb82d746c1cc50",
                        56937.599540469004, None),
    "classifier": ("9dfc8e1838a311eb4058cb33df0f9607d6031c8b806f81f9f25b8aa14dd54491", 846.3642813067127,
                   None),
    "vlm": ("1e6e3487cbe62a36c8da9bd369d618aea49b63ffd2967e3c158049f8ed444361", 988.4976277479946,
            5.06373538684845),
    "clip": ("7355e76ccbaf7373db687681624438cc8104eefd44dc9abb207475815989b12b", 3728.418585230018,
             2.1140825874328613),
    "sd": ("5106a858e24a702e2dfd579481c1ed95bc412dce750eda7884694ee9c7553ec4", 49255.9378194312,
           0.7935962466716766),
}


# --- the loop itself --------------------------------------------------------------------------

def _hand_written(steps: int, schedule, max_norm: float | None, ema_decay: float | None):
    """The loop ``train_steps`` replaces, written out: lr, batch, loss, backward, clip, step, EMA."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = Ema(model, ema_decay) if ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    running = None
    for step in range(steps):
        for g, lr in zip(opt.param_groups, schedule(step)):
            g["lr"] = lr
        x = torch.randn(4, 3, generator=gen)
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        if ema:
            ema.update(step)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
    return model, ema, running


@pytest.mark.parametrize(("max_norm", "ema_decay"), [(None, None), (0.05, 0.9)])
def test_train_steps_is_the_hand_written_loop(max_norm, ema_decay):
    schedule = warmup_cosine(0.1, 2, 6)
    want_model, want_ema, want_running = _hand_written(6, schedule, max_norm, ema_decay)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    emas = [Ema(model, ema_decay)] if ema_decay else []
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    running = train_steps(lambda: torch.randn(4, 3, generator=gen), lambda x: (model(x) ** 2).mean(), opt, 6,
                          schedule=schedule, max_grad_norm=max_norm, emas=emas)
    assert running == want_running
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 want_model.state_dict().values()))
    if ema_decay:
        got, want = emas[0].model.state_dict().values(), want_ema.model.state_dict().values()
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert not torch.equal(emas[0].model.weight, model.weight)  # it lags behind
    assert opt.param_groups[0]["lr"] == lr_at(5, 0.1, 2, 6)  # the last step's lr


def test_clipping_bounds_the_gradient_norm_of_every_param_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    train_steps(lambda: None, lambda _: (a * 30).sum() + (b * 40).sum(), opt, 1, max_grad_norm=1.0)
    grad_norm = torch.cat([a.grad, b.grad]).norm()
    assert grad_norm == pytest.approx(1.0, rel=1e-5)
    # SGD, lr 1: minus the clipped grad
    assert torch.allclose(torch.cat([a, b]).detach(), -torch.cat([a.grad, b.grad]))


def test_a_schedule_gives_one_lr_per_param_group():
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=1.0)
    train_steps(lambda: None, lambda _: (a + b).sum(), opt, 1, schedule=lambda step: [0.5, 0.25])
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.25]
    assert float(a) == 0.5 and float(b) == 0.75
    with pytest.raises(ValueError):  # one lr short: an error, not a silently unscheduled group
        train_steps(lambda: None, lambda _: (a + b).sum(), opt, 1, schedule=lambda step: [0.5])


def test_progress_logs_every_n_steps_and_the_last_with_the_running_loss():
    w = torch.nn.Parameter(torch.tensor(0.0))
    losses = iter([2.0, 4.0, 1.0, 3.0, 5.0])
    lines: list[str] = []
    running = train_steps(lambda: next(losses), lambda v: (w * 0 + v), torch.optim.SGD([w], lr=0.0), 5,
                          progress=Progress(lines.append, "unit", every=2))
    steps = [int(line.split()[2]) for line in lines]
    assert steps == [0, 2, 4] and all(line.startswith("  unit step ") for line in lines)
    want = 2.0
    for v in (4.0, 1.0, 3.0, 5.0):
        want = 0.98 * want + 0.02 * v
    assert running == pytest.approx(want, rel=1e-12)
    assert lines[-1].split()[4] == f"{want:.4f}"


def test_epoch_batches_permute_each_epoch_with_a_short_last_batch():
    nxt = epoch_batches(5, 2, torch.Generator().manual_seed(0))
    epoch1 = [nxt() for _ in range(3)]
    epoch2 = [nxt() for _ in range(3)]
    assert [len(b) for b in epoch1] == [2, 2, 1]
    assert sorted(torch.cat(epoch1).tolist()) == sorted(torch.cat(epoch2).tolist()) == [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(0)
    assert torch.equal(torch.cat(epoch1), torch.randperm(5, generator=g))  # the generator's draws, in order
    assert torch.equal(torch.cat(epoch2), torch.randperm(5, generator=g))


# --- every recipe, pinned ---------------------------------------------------------------------

def _weights_hash(state: dict[str, torch.Tensor]) -> tuple[str, float]:
    """sha256 of the tensors (name, dtype, shape, bytes; sorted by name) and the sum of their absolute
    values."""
    h, total = hashlib.sha256(), 0.0
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
        total += float(t.double().abs().sum()) if t.is_floating_point() else 0.0
    return h.hexdigest(), total


def _folder_hash(folder: Path) -> tuple[str, float]:
    from safetensors.torch import load_file

    state = {f"{f.relative_to(folder)}/{k}": v for f in sorted(folder.rglob("*.safetensors"))
             for k, v in load_file(f).items()}
    return _weights_hash(state)


@pytest.fixture(scope="module")
def tiny_digits(demo_root, tmp_path_factory) -> Path:
    """7 train and 2 val digits of each class from the demo data (the first files of each folder)."""
    root = tmp_path_factory.mktemp("tiny_digits")
    for split, n in (("train", 7), ("val", 2)):
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            for f in sorted((demo_root / split / str(c)).glob("*.png"))[:n]:
                shutil.copy(f, root / split / str(c) / f.name)
    shutil.copy(demo_root / "class_names.json", root / "class_names.json")
    return root


def _run_every_recipe(data: Path, out: Path, monkeypatch) -> dict[str, tuple[str, float, float | None]]:
    """Each recipe a few steps at tiny settings, its check stubbed: name -> (sha256, |w| sum, final loss)."""
    monkeypatch.setattr(models, "check_vlm", lambda *a, **k: {"class_name_share": 0.0, "attribute_match": {}})
    monkeypatch.setattr(models, "check_clip", lambda *a, **k: {"zero_shot_accuracy": 0.0,
                                                               "recall_at_5_image_to_caption": 0.0})
    monkeypatch.setattr(models, "check_sd", lambda *a, **k: {"sample_accuracy": 0.0, "samples_checked": 0})
    log = lambda _msg: None
    d = models.load_demo_data(data)
    got: dict[str, tuple[str, float, float | None]] = {}
    torch.manual_seed(0)
    recipe = dit.DemoDiTRecipe(vae_steps=3, vae_batch=8, dit_steps=3, dit_batch=8, dit_warmup=1, layers=1)
    x = torch.from_numpy(d.train_images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae, latents, _ = dit.train_vae(x, recipe, log)
    got["dit_vae"] = (*_weights_hash(vae.state_dict()), None)
    labels = torch.from_numpy(d.train_labels)
    got["dit"] = (*_weights_hash(dit.train_dit(latents, labels, recipe, log).state_dict()), None)
    no_var = replace(recipe, train_variance=False, dit_steps=2)
    got["dit_no_variance"] = (*_weights_hash(dit.train_dit(latents, labels, no_var, log).state_dict()), None)
    torch.manual_seed(0)
    got["classifier"] = (*_weights_hash(dit.train_classifier(d.train_images, d.train_labels, 2).state_dict()),
                         None)
    torch.manual_seed(0)
    r = models.train_demo_vlm(out / "vlm", data, models.DemoVLMRecipe(steps=3, batch=4, warmup=1), log)
    got["vlm"] = (*_folder_hash(out / "vlm"), r["final_loss"])
    torch.manual_seed(0)
    r = models.train_demo_clip(out / "clip", data, models.DemoCLIPRecipe(steps=3, batch=8, warmup=1), log)
    got["clip"] = (*_folder_hash(out / "clip"), r["final_loss"])
    torch.manual_seed(0)
    sd = models.DemoSDRecipe(vae_steps=2, unet_steps=3, batch=4, warmup=1, text_steps=3, text_warmup=1)
    r = models.train_demo_sd(out / "sd", shipped.WEIGHTS_DIR / "demo_clip", data, sd, log)
    got["sd"] = (*_folder_hash(out / "sd"), r["final_loss"])
    return got


def test_every_recipe_trains_the_weights_of_its_old_hand_written_loop(tiny_digits, tmp_path, monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = _run_every_recipe(tiny_digits, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(before)
    assert set(got) == set(PINNED)
    same_platform = (torch.__version__, torch.backends.cpu.get_cpu_capability()) == RECORDED_ON
    for name, (sha, abs_sum, loss) in got.items():
        want_sha, want_abs_sum, want_loss = PINNED[name]
        if same_platform:
            assert (sha, abs_sum, loss) == (want_sha, want_abs_sum,
                                            want_loss), f"{name}: not the recorded weights"
        else:
            assert abs_sum == pytest.approx(want_abs_sum, rel=1e-4), name
            assert loss is None if want_loss is None else loss == pytest.approx(want_loss, rel=1e-4), name
