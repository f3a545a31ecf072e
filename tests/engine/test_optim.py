"""LARS against the update written out by hand, exclusions, zero norms, exact resume;
warmup + cosine values; the learning-rate scaling rules."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn

from radengine.engine import LARS, WarmupCosine, lr_at, param_groups, scaled_lr


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3), nn.LayerNorm(3)
    ).double()


def train_step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()


def hand_lars(w, g, buf, lr, momentum, wd, eta, eps, lars):
    """One LARS update of flat python lists, by the formula (no torch)."""
    if lars:
        w_norm = math.sqrt(sum(v * v for v in w))
        g_norm = math.sqrt(sum(v * v for v in g))
        trust = eta * w_norm / (g_norm + wd * w_norm + eps) if w_norm > 0 and g_norm > 0 else 1.0
        d = [trust * (gi + wd * wi) for gi, wi in zip(g, w, strict=True)]
    else:
        d = list(g)
    buf = d if buf is None else [momentum * b + di for b, di in zip(buf, d, strict=True)]
    return [wi - lr * b for wi, b in zip(w, buf, strict=True)], buf


@pytest.mark.parametrize("eta", [0.001, 0.5])
def test_lars_matches_formula(gen, eta):
    model = tiny_model()
    hyper = dict(lr=0.7, momentum=0.9, trust_coefficient=eta, eps=1e-8)
    wd = 0.05
    opt = LARS(param_groups(model, weight_decay=wd), **hyper)
    lars_flags = {id(p): g["lars"] for g in opt.param_groups for p in g["params"]}
    params = list(model.parameters())
    hand_w = [p.detach().flatten().tolist() for p in params]
    hand_buf: list = [None] * len(params)
    for _ in range(4):
        x = torch.randn(8, 5, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        grads = [p.grad.flatten().tolist() for p in params]
        opt.step()
        for i, p in enumerate(params):
            lars = lars_flags[id(p)]
            hand_w[i], hand_buf[i] = hand_lars(
                hand_w[i],
                grads[i],
                hand_buf[i],
                hyper["lr"],
                hyper["momentum"],
                wd if lars else 0.0,
                eta,
                hyper["eps"],
                lars,
            )
            expected = torch.tensor(hand_w[i], dtype=torch.float64).view_as(p)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)
            # The model must stay on the hand trajectory (grads are taken from the model).
            p.data.copy_(expected)


def test_trust_ratio_scales_the_step():
    """A large-norm weight with a small gradient moves by about lr * eta * ||w|| per step,
    the LARS property; plain SGD would move by lr * ||g||."""
    w = nn.Parameter(torch.full((100,), 10.0, dtype=torch.float64))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.01)
    w.grad = torch.full_like(w, 1e-4)
    before = w.detach().clone()
    opt.step()
    step = (w.detach() - before).norm().item()
    assert step == pytest.approx(0.01 * before.norm().item(), rel=1e-4)  # eps / ||g|| = 1e-5


def test_param_groups_exclusions():
    class WithTokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)
            self.ln = nn.LayerNorm(2)
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 2))
            self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    m = WithTokens()
    groups = param_groups(m, weight_decay=1e-6)
    names = {id(p): n for n, p in m.named_parameters()}
    by_name = {g["name"]: g for g in groups}
    assert {names[id(p)] for p in by_name["decay"]["params"]} == {"conv.weight", "fc.weight"}
    assert {names[id(p)] for p in by_name["no_decay"]["params"]} == {
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "fc.bias",
        "ln.weight",
        "ln.bias",
        "pos_embed",
    }
    assert by_name["decay"]["weight_decay"] == 1e-6 and by_name["decay"]["lars"]
    assert by_name["no_decay"]["weight_decay"] == 0.0 and not by_name["no_decay"]["lars"]
    (everything,) = param_groups(m, weight_decay=1e-6, exclude_bias_and_norm=False)
    assert len(everything["params"]) == 9 and everything["lars"]
    assert [g["name"] for g in param_groups(nn.Linear(3, 3, bias=False), 0.1)] == ["decay"]


def test_excluded_group_is_plain_sgd_without_weight_decay(gen):
    """lars=False: no trust ratio and no weight decay even with weight_decay set."""
    a = nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
    b = nn.Parameter(a.detach().clone())
    lars = LARS([{"params": [a], "lars": False}], lr=0.3, momentum=0.8, weight_decay=0.5)
    sgd = torch.optim.SGD([b], lr=0.3, momentum=0.8)
    for _ in range(3):
        g = torch.randn(6, generator=gen, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        lars.step()
        sgd.step()
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-15)


def test_zero_norms_use_trust_one():
    w0 = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))  # ||w|| = 0
    g0 = nn.Parameter(torch.ones(3, 2, dtype=torch.float64))  # ||g|| = 0
    both = nn.Parameter(torch.zeros(4, dtype=torch.float64))  # both 0
    opt = LARS([w0, g0, both], lr=0.1, momentum=0.0, weight_decay=0.01)
    w0.grad = torch.full_like(w0, 2.0)
    g0.grad = torch.zeros_like(g0)
    both.grad = torch.zeros_like(both)
    opt.step()
    torch.testing.assert_close(w0.detach(), torch.full_like(w0, -0.2))  # -lr * g
    torch.testing.assert_close(g0.detach(), torch.full_like(g0, 1 - 0.1 * 0.01))  # -lr*wd*w
    assert torch.equal(both.detach(), torch.zeros(4, dtype=torch.float64))
    for p in (w0, g0, both):
        assert torch.isfinite(p).all()


def test_params_without_grad_are_untouched():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = LARS([a, b], lr=1.0)
    a.grad = torch.ones(3)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(3))


def make_run(seed: int = 0):
    model = tiny_model(seed)
    opt = LARS(param_groups(model, 1e-4), lr=2.0, momentum=0.9)
    sched = WarmupCosine(opt, total_steps=10, warmup_steps=3, final_fraction=0.1)
    return model, opt, sched


def test_state_dict_resume_is_exact():
    gen = torch.Generator().manual_seed(123)
    model, opt, sched = make_run()
    for _ in range(7):
        train_step(model, opt, gen)
        sched.step()
    straight = [p.detach().clone() for p in model.parameters()]

    gen = torch.Generator().manual_seed(123)
    model, opt, sched = make_run()
    for _ in range(4):
        train_step(model, opt, gen)
        sched.step()
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, opt, sched = make_run(seed=99)  # different init: everything must come from saved
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    assert [g["lars"] for g in opt.param_groups] == [True, False]
    for _ in range(3):
        train_step(model, opt, gen)
        sched.step()
    for a, b in zip(model.parameters(), straight, strict=True):
        assert torch.equal(a.detach(), b)


def test_lr_at_key_steps():
    base, final, total, warm = 4.8, 0.048, 110, 10
    assert lr_at(0, total, base, warm, final) == 0.0
    assert lr_at(5, total, base, warm, final) == pytest.approx(base / 2)
    assert lr_at(warm, total, base, warm, final) == pytest.approx(base)
    assert lr_at(60, total, base, warm, final) == pytest.approx((base + final) / 2)
    assert lr_at(35, total, base, warm, final) == pytest.approx(
        final + (base - final) * (1 + math.cos(math.pi / 4)) / 2
    )
    assert lr_at(total, total, base, warm, final) == pytest.approx(final)
    assert lr_at(total + 50, total, base, warm, final) == pytest.approx(final)
    assert lr_at(0, 100, 1.0, 0) == 1.0  # no warmup: cosine from the first step
    values = [lr_at(s, total, base, warm, final) for s in range(total + 1)]
    assert all(a <= b for a, b in itertools.pairwise(values[: warm + 1]))
    assert all(a >= b for a, b in itertools.pairwise(values[warm:]))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 0, 1.0, 0), "total_steps must be >= 1"),
        ((0, 10, 1.0, 11), "warmup_steps must be in"),
        ((0, 10, 1.0, -1), "warmup_steps must be in"),
        ((-1, 10, 1.0, 2), "step must be >= 0"),
    ],
)
def test_lr_at_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        lr_at(*args)


def test_warmup_cosine_scheduler_follows_lr_at():
    p, q = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    opt = LARS([{"params": [p]}, {"params": [q], "lr": 0.5, "lars": False}], lr=2.0)
    sched = WarmupCosine(opt, total_steps=20, warmup_steps=4, final_fraction=0.01)
    for step in range(25):
        for group, base in zip(opt.param_groups, (2.0, 0.5), strict=True):
            assert group["lr"] == pytest.approx(lr_at(step, 20, base, 4, 0.01 * base)), step
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(opt, total_steps=5, warmup_steps=6)


def test_scaled_lr():
    assert scaled_lr(4096) == pytest.approx(4.8)  # study A
    assert scaled_lr(256) == pytest.approx(1.2)
    assert scaled_lr(4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(512, "linear", base=0.1) == pytest.approx(0.2)
    assert scaled_lr(100, base=0.5) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="rule must be"):
        scaled_lr(256, "cubic")
    with pytest.raises(ValueError, match="batch must be"):
        scaled_lr(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=-1.0), "lr must be"),
        (dict(lr=1.0, momentum=1.0), "momentum must be"),
        (dict(lr=1.0, weight_decay=-1e-6), "weight_decay must be"),
        (dict(lr=1.0, trust_coefficient=0.0), "trust_coefficient must be"),
        (dict(lr=1.0, eps=0.0), "eps must be"),
    ],
)
def test_lars_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LARS([nn.Parameter(torch.zeros(1))], **kwargs)
