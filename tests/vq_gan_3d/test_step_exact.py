"""Training-step properties that must not change the result: the generator step computes no discriminator weight
gradients (known answer: the weights after two seeded steps), no discriminator Adam steps before the warm-up ends,
and activation checkpointing (equal within fp32 round-off)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytorch_lightning as pl
import torch

import vq_gan_3d.module as module_mod
from tests.vq_gan_3d.helpers import (
    adam_pair,
    loader,
    phantom_batch,
    run_module_step,
    state_digest,
    tiny_model,
    trainer,
)
from vq_gan_3d.module import VQGANModule, _frozen

# sha256 of the state dict after two GAN steps of the tiny model (seeded, one thread), recorded when the step that
# computed and dropped the discriminator weight gradients still existed: that step, the single-process step and
# the DDP code path all gave these bits. Digests of float results hold for this CPU kernel family (x86 oneDNN).
# The spade digest was re-recorded when SPADE's gamma/beta lookup became multiply-then-gather-and-sum (its sums in
# another order: the first step's generator gradients moved by at most 5.3e-6 relative to each tensor's largest
# value; Adam's normalised update turns such a change of a near-zero gradient into a step-sized one).
KNOWN_STEP_DIGESTS = {
    "normal": "0db2090c0e03c2f6583441ec172ea9b3fb46de0a3f00f88afafb973a6f3ece22",
    "spade": "8e7a39111896dd93d57763768ae5d1353e158fe5a9a34071e60c69589e8eae49",
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The known answers were recorded with one thread (other thread counts sum in another order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("mode", ["shared", "ddp-path"])
@pytest.mark.parametrize("decoder", ["normal", "spade"])
def test_generator_step_gives_the_known_answer_and_computes_no_discriminator_grads(
    decoder: str, mode: str, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    # shared: single process (one discriminator forward on the fake serves both steps); ddp-path: the code path
    # taken under DDP (frozen discriminator forward, zero touches), run here without a process group.
    monkeypatch.setattr(module_mod, "_distributed", lambda: mode == "ddp-path")
    torch.manual_seed(0)
    model = tiny_model(decoder=decoder, discriminator_iter_start=0, gradient_clip_val=None)
    opts = adam_pair(model)
    model.train()
    for step in range(2):  # GAN on from the first batch; Adam states must stay equal too
        seen: dict[str, list] = {}
        torch.manual_seed(100 + step)  # the random slices and codebook restarts draw from the global RNG
        run_module_step(
            model, phantom_batch(seed=step), *opts,
            before_generator_backward=lambda: seen.update(pre_d=_grads(model._discriminator_params())),  # noqa: B023
            after_generator_backward=lambda: seen.update(  # noqa: B023
                g=_grads(model._generator_params()), d=_grads(model._discriminator_params())
            ),
        )  # fmt: skip
        assert all(g is not None for g in seen["g"])
        if mode == "shared":
            # The discriminator backward (restricted to the discriminators) ran just before the generator's, which
            # leaves those gradients exactly as they were: it computes no discriminator weight gradient.
            assert all(g is not None for g in seen["pre_d"])
            assert all(torch.equal(a, b) for a, b in zip(seen["pre_d"], seen["d"]))
        else:
            # Gradients were cleared before; the zero touch that DDP needs gives exact zeros, nothing else.
            assert all(g is None for g in seen["pre_d"])
            assert all(g is not None and not g.any() for g in seen["d"])
    assert state_digest(model) == KNOWN_STEP_DIGESTS[decoder]


def test_frozen_discriminator_forward_gives_input_grads_and_no_weight_grads() -> None:
    from vq_gan_3d.discriminator import PatchGAN

    torch.manual_seed(1)
    disc = PatchGAN(3, 1, channels=4, num_layers=2)
    x = torch.randn(2, 1, 16, 16, 16)
    grads = []
    for frozen in (True, False):
        disc.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        if frozen:
            with _frozen(disc):
                logits, feats = disc(xx)
            assert all(p.requires_grad for p in disc.parameters())  # restored on exit
        else:
            logits, feats = disc(xx)
        (logits.mean() + sum(f.abs().mean() for f in feats)).backward()
        grads.append(xx.grad)
        assert all(p.grad is None for p in disc.parameters()) == frozen
    assert torch.equal(grads[0], grads[1])  # the generator-side gradient is bit-identical


class _DiscAdamProbe(pl.Callback):
    """Records the discriminator Adam state per batch and checks its first real update against a fresh Adam."""

    def __init__(self) -> None:
        self.state_sizes: list[int] = []
        self.pending: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.checked = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if params[0] is not pl_module._discriminator_params()[0]:
            return
        if self.pending is None and self.checked == 0 and any(p.grad is not None for p in params):
            self.pending = ([p.detach().clone() for p in params], [p.grad.clone() for p in params])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        opt_d = trainer.optimizers[1]
        self.state_sizes.append(len(opt_d.state))
        if self.pending is not None:
            before, grads = self.pending
            fresh = [torch.nn.Parameter(p.clone()) for p in before]
            for p, g in zip(fresh, grads):
                p.grad = g
            torch.optim.Adam(fresh, lr=pl_module.hparams.lr, betas=tuple(pl_module.hparams.betas)).step()
            actual = [p.detach() for p in pl_module._discriminator_params()]
            assert all(torch.equal(a, b) for a, b in zip(actual, fresh))
            assert all(int(s["step"]) == 1 for s in opt_d.state.values())
            self.pending = None
            self.checked += 1


def test_discriminator_adam_does_not_step_before_warm_up() -> None:
    pl.seed_everything(3, verbose=False)
    model = tiny_model(discriminator_iter_start=2, gradient_clip_val=None)
    probe = _DiscAdamProbe()
    tr = trainer(2 * 4, callbacks=[probe])
    tr.fit(model, loader(phantom_batch()))
    assert tr.global_step == 8  # both optimisers still count a step per batch
    n_disc = len(model._discriminator_params())
    assert probe.state_sizes == [0, 0, n_disc, n_disc]  # no Adam state (no step count) during the warm-up
    assert probe.checked == 1  # the first GAN batch's update is a fresh Adam's first update, bit for bit


@pytest.mark.parametrize(
    ("decoder", "lean"),
    [
        ("normal", {"checkpointing": True}),
        ("spade", {"checkpointing": True}),
        ("spade", {"spade_recompute": True}),
        ("spade", {"checkpointing": True, "spade_recompute": True}),
    ],
    ids=["normal-ckpt", "spade-ckpt", "spade-recompute", "spade-both"],
)
def test_checkpointing_matches_plain_within_round_off(decoder: str, lean: dict) -> None:
    torch.manual_seed(4)
    plain = tiny_model(decoder=decoder, discriminator_iter_start=0, gradient_clip_val=None)
    ckpt = VQGANModule(**{**dict(plain.hparams), **lean})
    ckpt.load_state_dict(plain.state_dict())
    if lean.get("checkpointing"):
        assert sum(getattr(m, "checkpointing", False) is True for m in ckpt.modules()) >= 6
    if lean.get("spade_recompute"):
        assert sum(getattr(m, "recompute", False) is True for m in ckpt.modules()) >= 5
    results = []
    for model in (plain, ckpt):
        model.train()
        seen: dict[str, list] = {}
        torch.manual_seed(5)
        logged = run_module_step(
            model, phantom_batch(), *adam_pair(model),
            after_generator_backward=lambda m=model: seen.update(g=_grads(m._generator_params())),  # noqa: B023
        )  # fmt: skip
        grads_d = _grads(model._discriminator_params())
        results.append((logged, seen["g"], grads_d))
    (log_a, ga, da), (log_b, gb, db) = results
    assert set(log_a) == set(log_b)
    for k in log_a:
        torch.testing.assert_close(torch.as_tensor(log_b[k]), torch.as_tensor(log_a[k]), rtol=1e-6, atol=1e-6)
    for a, b in zip(ga + da, gb + db):
        scale = float(a.abs().max()) + 1e-12
        torch.testing.assert_close(b / scale, a / scale, rtol=1e-6, atol=1e-6)  # 1e-6 relative to the tensor
