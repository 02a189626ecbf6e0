"""EMA codebook: quantisation, straight-through, known-answer statistics, persisted init, EMA, restart, DDP."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vq_gan_3d.codebook as codebook_mod
from vq_gan_3d.codebook import EMACodebook


def _as_latent(vectors: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """(N, E) rows -> (1, E, d, h, w) latent with N = d*h*w, row order = raster order."""
    return vectors.T.reshape(1, vectors.shape[1], *spatial).contiguous()


def _initialised(n_codes: int = 4, dim: int = 2, **kwargs) -> EMACodebook:
    cb = EMACodebook(n_codes, dim, **kwargs)
    cb.embeddings.copy_(torch.arange(n_codes * dim, dtype=torch.float32).view(n_codes, dim) * 10)
    cb.z_avg.copy_(cb.embeddings)
    cb.N.fill_(1.0)
    cb.initialized.fill_(True)
    return cb


def test_quantises_to_nearest_code_with_known_commitment_loss() -> None:
    cb = _initialised(commitment_cost=0.25).eval()
    codes = cb.embeddings.clone()
    z_rows = codes[[2, 0, 3, 1, 2, 2, 0, 1]] + 0.5  # each row 0.5 off its code in both dims
    out = cb(_as_latent(z_rows, (2, 2, 2)))
    assert out.indices.flatten().tolist() == [2, 0, 3, 1, 2, 2, 0, 1]
    torch.testing.assert_close(out.z_q, _as_latent(codes[[2, 0, 3, 1, 2, 2, 0, 1]], (2, 2, 2)))
    torch.testing.assert_close(out.commitment_loss, torch.tensor(0.25 * 0.25))


def test_straight_through_gradient_is_identity() -> None:
    cb = _initialised().eval()
    z = torch.randn(2, 2, 2, 2, 2, requires_grad=True)
    w = torch.randn(2, 2, 2, 2, 2)
    (cb(z).z_q * w).sum().backward()
    torch.testing.assert_close(z.grad, w)


@pytest.mark.parametrize("n_used", [1, 2, 4], ids=["one-code", "two-codes", "all-codes"])
def test_perplexity_and_usage_known_answers(n_used: int) -> None:
    # Uniform use of n codes -> perplexity n, usage n / n_codes.
    cb = _initialised(n_codes=4).eval()
    rows = cb.embeddings[torch.arange(8) % n_used]
    out = cb(_as_latent(rows, (2, 2, 2)))
    torch.testing.assert_close(out.perplexity, torch.tensor(float(n_used)))
    torch.testing.assert_close(out.code_usage, torch.tensor(n_used / 4))


def test_no_update_in_eval_or_when_disallowed() -> None:
    cb = _initialised()
    before = {k: v.clone() for k, v in cb.state_dict().items()}
    z = torch.randn(1, 2, 2, 2, 2)
    cb.eval()(z)
    cb.train()(z, allow_update=False)
    for k, v in cb.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ema_update_known_answer() -> None:
    cb = _initialised(n_codes=4, random_restart=False).train()
    codes = cb.embeddings.clone()
    rows = torch.cat([codes[[0, 0, 1]] + 1.0, codes[[3]] - 2.0])  # code 0 twice, 1 once, 3 once, 2 unused
    cb(_as_latent(rows, (1, 2, 2)))
    counts = torch.tensor([2.0, 1.0, 0.0, 1.0])
    sums = torch.stack([2 * codes[0] + 2, codes[1] + 1, torch.zeros(2), codes[3] - 2])
    n_exp = 0.99 * 1.0 + 0.01 * counts
    z_avg_exp = 0.99 * codes + 0.01 * sums
    torch.testing.assert_close(cb.N, n_exp)
    torch.testing.assert_close(cb.z_avg, z_avg_exp)
    total = n_exp.sum()
    smoothed = (n_exp + 1e-7) / (total + 4 * 1e-7) * total
    torch.testing.assert_close(cb.embeddings, z_avg_exp / smoothed[:, None])


def test_data_dependent_init_persists_through_state_dict() -> None:
    torch.manual_seed(0)
    cb = EMACodebook(8, 3, random_restart=False).train()
    data = torch.randn(1, 3, 2, 2, 4)  # exactly 16 vectors >= 8 codes: init picks 8 of them
    cb(data)
    assert bool(cb.initialized)
    rows = data.movedim(1, -1).reshape(-1, 3)
    # every code was initialised from a data vector, then moved by one EMA step towards its assignments
    assert torch.cdist(cb.z_avg / cb.N[:, None], rows).min(dim=1).values.max() < 2.0
    state = {k: v.clone() for k, v in cb.state_dict().items()}
    assert "initialized" in state

    resumed = EMACodebook(8, 3, random_restart=False)
    resumed.load_state_dict(state)
    assert bool(resumed.initialized)
    far = torch.randn(1, 3, 2, 2, 4) + 100.0  # a re-init would copy these vectors into the codebook
    idx = resumed.eval()(far).indices.flatten()
    resumed.train()(far)
    # exactly one EMA step from the loaded state, no re-initialisation
    torch.testing.assert_close(resumed.N, 0.99 * state["N"] + 0.01 * torch.bincount(idx, minlength=8).float())
    torch.testing.assert_close(
        resumed.z_avg,
        0.99 * state["z_avg"] + 0.01 * torch.zeros(8, 3).index_add_(0, idx, far.movedim(1, -1).reshape(-1, 3)),
    )
    assert resumed.embeddings.abs().max() < 50.0


def test_init_tiles_when_fewer_vectors_than_codes() -> None:
    cb = EMACodebook(32, 2, random_restart=False).train()
    data = torch.randn(1, 2, 1, 2, 2)  # 4 vectors for 32 codes
    cb(data)
    rows = data.movedim(1, -1).reshape(-1, 2)
    # each initial code is a data vector plus noise of std 0.01 / sqrt(2)
    assert torch.cdist(cb.z_avg / cb.N[:, None], rows).min(dim=1).values.max() < 0.2


def test_dead_codes_restart_from_current_encoder_outputs() -> None:
    cb = _initialised(n_codes=4, restart_thres=1.0)
    cb.embeddings[3] = 1e4  # never nearest: stays unused, its count decays to 0.99 < 1 -> restarted
    cb.z_avg[3] = 1e4
    rows = cb.embeddings[[0, 1, 2, 0, 1, 2, 0, 1]].clone() + 0.1
    cb.train()(_as_latent(rows, (2, 2, 2)))
    dead = cb.embeddings[3]
    assert torch.isclose(torch.cdist(dead[None], rows), torch.tensor(0.0), atol=1e-5).any()
    assert cb.N[3] == 1.0 and torch.equal(cb.z_avg[3], dead)  # EMA statistics restarted with the code


def test_dead_codes_stay_without_random_restart() -> None:
    cb = _initialised(n_codes=4, random_restart=False)
    cb.embeddings[3] = 1e4
    cb.z_avg[3] = 1e4
    cb.train()(_as_latent(cb.embeddings[[0, 1, 2, 0, 1, 2, 0, 1]].clone(), (2, 2, 2)))
    assert cb.embeddings[3].min() > 9e3


def test_chunked_nearest_matches_full_search(monkeypatch: pytest.MonkeyPatch) -> None:
    cb = EMACodebook(16, 3).eval()
    z = torch.randn(2, 3, 4, 4, 4)
    full = cb(z).indices
    monkeypatch.setattr(codebook_mod, "_DISTANCE_CHUNK_ELEMENTS", 16 * 5)  # 5 rows per chunk
    assert torch.equal(cb(z).indices, full)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_codes": 1}, "n_codes"), ({"decay": 1.0}, "decay"), ({"commitment_cost": -1.0}, "commitment_cost")],
    ids=["n_codes", "decay", "beta"],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        EMACodebook(**{"n_codes": 8, "embedding_dim": 2, **kwargs})


def test_wrong_latent_shape_raises() -> None:
    with pytest.raises(ValueError, match="z must be"):
        EMACodebook(8, 2)(torch.randn(1, 3, 2, 2, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different data and RNG streams per rank
        cb = EMACodebook(16, 3).train()
        for _ in range(3):
            cb(torch.randn(2, 3, 2, 2, 2) + rank)
        torch.save({k: v for k, v in cb.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_hold_identical_codebooks(tmp_path) -> None:
    # Two gloo processes with different data: init broadcast, all-reduced EMA and broadcast restarts must agree.
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    assert bool(s0["initialized"])


def test_cache_sized_chunks_give_the_one_shot_distances_at_paper_size(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default chunk (a few rows of the 16384-code distance matrix, cache-resident) must pick exactly the
    # codes of one full (2048, 16384) distance matrix: the per-element arithmetic is the same.
    torch.manual_seed(0)
    cb = EMACodebook(16384, 8).eval()
    flat = torch.randn(2048, 8)
    chunked = cb._nearest(flat)
    monkeypatch.setattr(codebook_mod, "_DISTANCE_CHUNK_ELEMENTS", 2048 * 16384)
    assert torch.equal(cb._nearest(flat), chunked)
