"""SPADE block: known answers for the modulation, label dependence, argument checks."""

from __future__ import annotations

import pytest
import torch

from vq_gan_3d.spade import SPADE, SPADEResBlock3D, labels_from_one_hot, modulation_cache


def _seg(b: int, k: int, size: tuple[int, int, int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.randint(0, k, (b, *size)), k).movedim(-1, 1).float()


def test_zero_modulation_is_plain_group_norm() -> None:
    spade = SPADE(8, 3, hidden=4, num_groups=2)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.weight)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.bias)
    x = torch.randn(2, 8, 4, 4, 4)
    expected = torch.nn.functional.group_norm(x, 2, eps=1e-5)
    torch.testing.assert_close(spade(x, _seg(2, 3, (16, 16, 16))), expected)


def test_known_scale_and_shift() -> None:
    # gamma = 1 and beta = 2 everywhere (bias only) -> out = norm(x) * 2 + 2.
    spade = SPADE(4, 2, hidden=3, num_groups=4)
    torch.nn.init.zeros_(spade.mlp_gamma_beta.weight)
    with torch.no_grad():
        spade.mlp_gamma_beta.bias.copy_(torch.tensor([1.0] * 4 + [2.0] * 4))  # gamma channels first, then beta
    x = torch.randn(1, 4, 2, 4, 4)
    out = spade(x, _seg(1, 2, (2, 4, 4)))
    torch.testing.assert_close(out, torch.nn.functional.group_norm(x, 4, eps=1e-5) * 2 + 2)


def test_output_depends_on_label() -> None:
    spade = SPADE(4, 3, hidden=4, num_groups=2)
    x = torch.randn(1, 4, 2, 4, 4)
    seg_a = torch.zeros(1, 3, 8, 16, 16)
    seg_a[:, 0] = 1
    seg_b = seg_a.clone()
    seg_b[:, :, :, :8] = 0
    seg_b[:, 1, :, :8] = 1  # top half of every slice changes class
    assert not torch.allclose(spade(x, seg_a), spade(x, seg_b))
    assert spade.mlp_shared[0].kernel_size == (1, 3, 3)  # in-plane only, as the reference


def test_label_map_is_resized_nearest() -> None:
    # 2x downsizing by nearest reads the even voxels only, so changing every odd voxel changes nothing
    # (trilinear or area resizing would see the change).
    spade = SPADE(4, 2, hidden=4, num_groups=2)
    x = torch.randn(1, 4, 2, 4, 4)
    seg_a = _seg(1, 2, (4, 8, 8))
    seg_b = seg_a.clone()
    seg_b[:, :, 1::2] = 1 - seg_b[:, :, 1::2]
    seg_b[:, :, :, 1::2] = 1 - seg_a[:, :, :, 1::2]
    torch.testing.assert_close(spade(x, seg_a), spade(x, seg_b))
    seg_c = seg_a.clone()
    seg_c[:, :, 0::2, 0::2, 0::2] = 1 - seg_c[:, :, 0::2, 0::2, 0::2]
    assert not torch.allclose(spade(x, seg_a), spade(x, seg_c))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel": (1, 2, 3)}, "odd"),
        ({"kernel": (3, 3)}, "odd"),
        ({"hidden": 0}, "hidden"),
        ({"num_groups": 3}, "divide"),
    ],
    ids=["even-kernel", "kernel-len", "hidden", "groups"],
)
def test_bad_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SPADE(8, 3, **kwargs)


def test_wrong_label_channels_raise() -> None:
    with pytest.raises(ValueError, match="label_nc=3"):
        SPADE(8, 3, hidden=4)(torch.randn(1, 8, 2, 2, 2), _seg(1, 4, (4, 4, 4)))


def test_spade_resblock_shapes() -> None:
    block = SPADEResBlock3D(4, 8, label_nc=3, spade_hidden=4, num_groups=4)
    assert block(torch.randn(2, 4, 4, 4, 4), _seg(2, 3, (16, 16, 16))).shape == (2, 8, 4, 4, 4)


# ---------------------------------------------------------------- modulation cache (sampling)
def _counting(spade: SPADE) -> list[int]:
    """Count hidden-map computations of ``spade`` (each is one full modulation computation)."""
    calls = [0]
    original = spade.hidden_map

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    spade.hidden_map = counted  # type: ignore[method-assign]
    return calls


def test_modulation_cache_is_bit_identical_and_computes_once() -> None:
    torch.manual_seed(0)
    block = SPADEResBlock3D(4, 8, label_nc=3, spade_hidden=6, num_groups=2).eval()
    calls = [_counting(block.norm1), _counting(block.norm2)]
    seg = _seg(2, 3, (8, 8, 8))
    xs = [torch.randn(2, 4, 4, 4, 4) for _ in range(3)]
    with torch.no_grad():
        plain = [block(x, seg) for x in xs]
        assert [c[0] for c in calls] == [3, 3]
        with modulation_cache(block):
            cached = [block(x, seg) for x in xs]
        assert [c[0] for c in calls] == [4, 4]  # one computation per SPADE for the three calls
        for p, c in zip(plain, cached):
            assert torch.equal(p, c)
        # Outside the context nothing is cached.
        block(xs[0], seg)
        assert [c[0] for c in calls] == [5, 5]
        assert block.norm1._modulation_cache is None


def test_modulation_cache_recomputes_for_a_different_or_edited_seg() -> None:
    torch.manual_seed(1)
    spade = SPADE(4, 3, hidden=5, num_groups=2).eval()
    calls = _counting(spade)
    x = torch.randn(1, 4, 4, 4, 4)
    seg_a, seg_b = _seg(1, 3, (4, 4, 4)), _seg(1, 3, (4, 4, 4))
    with torch.no_grad(), modulation_cache(spade):
        out_a = spade(x, seg_a)
        out_b = spade(x, seg_b)  # another tensor: recomputed
        assert calls[0] == 2
        assert torch.equal(out_b, SPADE.forward(spade, x, seg_b.clone()))
        assert calls[0] == 3
        seg_a[:, :, :2] = seg_b[:, :, :2]  # in-place edit bumps _version: recomputed, not served stale
        edited = spade(x, seg_a)
        assert calls[0] == 4
        assert not torch.equal(edited, out_a)
        spade(x[:, :, :2], seg_a)  # another grid: recomputed
        assert calls[0] == 5
    with torch.no_grad():
        assert torch.equal(edited, spade(x, seg_a))


def test_modulation_cache_covers_integer_labels_and_nested_modules() -> None:
    torch.manual_seed(2)
    model = torch.nn.ModuleList([SPADE(4, 3, hidden=5, num_groups=2), SPADE(4, 3, hidden=5, num_groups=2)]).eval()
    labels = torch.randint(0, 3, (1, 1, 4, 8, 8))
    x = torch.randn(1, 4, 4, 8, 8)
    with torch.no_grad():
        plain = [m(x, labels) for m in model]
        with modulation_cache(model):
            with modulation_cache(model[0]):  # re-entrant: the inner exit restores the outer cache
                pass
            assert model[0]._modulation_cache == {}
            again = [m(x, labels) for m in model for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip([plain[0], plain[0], plain[1], plain[1]], again))
    assert model[0]._modulation_cache is None


# ---------------------------------------------------------------- lookup path and fused gamma/beta
def _dyadic_(module: torch.nn.Module, seed: int) -> None:
    """Weights that are multiples of 1/64 in [-0.5, 0.5]: every sum of a few of them is exact in fp32, so any
    summation order gives the same bits and the lookup can be compared with the conv bit for bit."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-32, 33, p.shape, generator=g).float() / 64)


def _blocky_labels(b: int, k: int, size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """(B, 1, D, H, W) piecewise-constant class map (random classes on a coarse grid, nearest-upsampled)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, k, (b, 1, *(max(s // 2, 1) for s in size)), generator=g).float()
    return torch.nn.functional.interpolate(coarse, size=size, mode="nearest").long()


def _onehot(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0], k).movedim(-1, 1).float()


@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 3, 3), (1, 1, 1), (3, 1, 5)])
@pytest.mark.parametrize("grid", [(6, 10, 10), (3, 5, 7), (12, 20, 20)], ids=["same", "odd-ratio", "up"])
def test_lookup_hidden_map_is_bit_identical_to_conv_over_one_hot(kernel, grid) -> None:
    k = 5
    spade = SPADE(4, k, hidden=7, kernel=kernel, num_groups=2)
    _dyadic_(spade, seed=sum(kernel) + grid[2])
    labels = _blocky_labels(2, k, (6, 10, 10), seed=grid[1])
    labels[0, 0, 0, 0, :3] = torch.tensor([0, 4, 2])  # classes next to the zero-padded border
    with torch.no_grad():
        by_conv = spade.hidden_map(_onehot(labels, k), grid, torch.float32)
        by_lookup = spade.hidden_map(labels, grid, torch.float32)
    assert by_lookup.shape == by_conv.shape == (2, 7, *grid)
    assert torch.equal(by_lookup, by_conv)


def test_lookup_handles_many_classes_and_noisy_maps() -> None:
    # (K + 1) ** 9 overflows int64 for K = 200, so the neighbourhood codes are re-ranked on the way; noise makes
    # nearly every neighbourhood distinct (the worst case of the pattern tables).
    for k, size in ((200, (2, 6, 6)), (3, (2, 7, 7))):
        spade = SPADE(2, k, hidden=3, num_groups=1)
        _dyadic_(spade, seed=k)
        labels = torch.randint(0, k, (1, 1, *size))
        x = torch.randn(1, 2, *size)
        with torch.no_grad():
            hidden = spade.hidden_map(labels, size, torch.float32)
            full = spade(x, labels)
            spade.lookup = False
            assert torch.equal(hidden, spade.hidden_map(_onehot(labels, k), size, torch.float32))
            assert torch.equal(full, spade(x, _onehot(labels, k)))


def test_lookup_matches_conv_within_round_off_with_gradients() -> None:
    # Random weights: the lookup adds the same products as the conv, in another order, so equality is up to
    # fp32 rounding (about 1e-7 relative); gradients of all parameters and of x agree to 1e-6 relative.
    torch.manual_seed(7)
    k = 4
    new = SPADE(6, k, hidden=8, num_groups=2, lookup=True)
    old = SPADE(6, k, hidden=8, num_groups=2, lookup=False)
    old.load_state_dict(new.state_dict())
    labels = _blocky_labels(2, k, (8, 12, 12))
    x = torch.randn(2, 6, 4, 6, 6)
    outs = []
    for module, seg in ((new, labels), (old, _onehot(labels, k))):
        xx = x.clone().requires_grad_()
        y = module(xx, seg)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xx.grad, [p.grad for p in module.parameters()]))
    (ya, gxa, gpa), (yb, gxb, gpb) = outs
    torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
    for a, b in zip([gxa, *gpa], [gxb, *gpb]):
        scale = float(b.abs().max())
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-6, atol=1e-6)


def test_soft_maps_take_the_conv_and_fused_gamma_beta_equals_two_convs() -> None:
    torch.manual_seed(8)
    spade = SPADE(4, 3, hidden=6, num_groups=2)
    _dyadic_(spade, seed=8)  # exact sums: the fused conv must give the two convs' bits
    soft = torch.softmax(torch.randn(1, 3, 4, 6, 6), 1).round(decimals=2)
    assert labels_from_one_hot(soft) is None
    x = torch.randn(1, 4, 4, 6, 6)
    with torch.no_grad():
        fused = spade(x, soft)
        spade.lookup = False  # two convs over the halves of the fused weights
        assert torch.equal(fused, spade(x, soft))


def test_decoder_converts_one_hot_once_and_integer_maps_agree() -> None:
    from vq_gan_3d.decoder import SPADEDecoder3D

    torch.manual_seed(10)
    dec = SPADEDecoder3D(1, 4, [2, 2, 2], label_nc=3, spade_hidden=5, num_groups=2).eval()
    labels = _blocky_labels(1, 3, (8, 8, 8))
    h = torch.randn(1, dec.in_channels, 4, 4, 4)
    with torch.no_grad():
        from_int = dec(h, labels)
        assert torch.equal(dec(h, _onehot(labels, 3)), from_int)  # exact one-hot -> the same class map
        dec.lookup = False
        for m in dec.modules():
            if isinstance(m, SPADE):
                m.lookup = False
        by_conv = dec(h, _onehot(labels, 3))
        assert torch.equal(dec(h, labels), by_conv)  # an integer map is one-hot encoded once
    torch.testing.assert_close(from_int, by_conv, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 3, 3), (1, 1, 3)])
def test_full_lookup_modulation_is_bit_identical_with_exact_weights(kernel) -> None:
    # Both convs as lookups (gamma/beta over the hidden-map patterns, zero rows outside the grid): with dyadic
    # weights every partial sum is exact, so the result must equal the two-conv original bit for bit.
    k = 4
    spade = SPADE(3, k, hidden=6, kernel=kernel, num_groups=1)
    _dyadic_(spade, seed=11 + kernel[0])
    labels = _blocky_labels(2, k, (4, 10, 10), seed=3)
    x = torch.randn(2, 3, 4, 5, 5)
    with torch.no_grad():
        by_lookup = spade(x, labels)
        spade.lookup = False
        by_conv = spade(x, _onehot(labels, k))
    assert torch.equal(by_lookup, by_conv)


def test_lookup_bytes_counts_tables_and_products() -> None:
    from vq_gan_3d.spade import lookup_bytes

    # U = 10 neighbourhoods of R = 3 hidden patterns, 9 offsets, 2C = 6, fp32: patterns and bag indices 2*10*9*8,
    # products (3 + 1)*9*6*4 (twice with grad: their gradient), the sum before and after the bias 2*10*6*4
    assert lookup_bytes(10, 3, 9, 6, grad=True, itemsize=4) == 1440 + 2 * 864 + 480
    assert lookup_bytes(10, 3, 9, 6, grad=False, itemsize=4) == 1440 + 864 + 480


@pytest.mark.parametrize("grad", [False, True])
def test_lookup_bound_falls_back_to_the_conv_exactly_on_both_sides(grad) -> None:
    """Under the bound the call is the lookup, bit for bit; over it, the conv over the looked-up hidden map."""
    torch.manual_seed(12)
    k = 6
    labels = _blocky_labels(2, k, (4, 10, 10), seed=5)
    x = torch.randn(2, 3, 4, 10, 10)
    unbounded = SPADE(3, k, hidden=5, num_groups=1)
    results = {}
    for name, max_mb in (("none", None), ("huge", 1e6), ("zero", 0.0)):
        spade = SPADE(3, k, hidden=5, num_groups=1, lookup_max_mb=max_mb)
        spade.load_state_dict(unbounded.state_dict())
        xx = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = spade(xx, labels)
            if grad:
                y.sum().backward()
        results[name] = (y.detach(), xx.grad if grad else None, spade)
    assert torch.equal(results["none"][0], results["huge"][0])
    # over the bound: exactly the conv over the hidden map (the conv path of an integer map)
    spade = results["zero"][2]
    with torch.no_grad():
        labels_small = labels[:, 0]
        hidden = spade._lookup_hidden(labels_small)
        gamma, beta = spade.mlp_gamma_beta(hidden).chunk(2, dim=1)
        expected = spade.norm(x) * (1 + gamma) + beta
    assert torch.equal(results["zero"][0], expected)
    # and within round-off of the lookup, with gradients that flow
    torch.testing.assert_close(results["zero"][0], results["none"][0], rtol=1e-5, atol=1e-5)
    if grad:
        torch.testing.assert_close(results["zero"][1], results["none"][1], rtol=1e-5, atol=1e-5)
        assert all(p.grad is not None for p in spade.parameters())


def test_lookup_bound_is_a_byte_threshold() -> None:
    """The choice is made by lookup_bytes against the bound: just above it the lookup runs, just below it not."""
    from vq_gan_3d.spade import _neighbourhoods, lookup_bytes

    torch.manual_seed(13)
    k = 5
    labels = _blocky_labels(1, k, (2, 8, 8), seed=2)
    spade = SPADE(2, k, hidden=4, num_groups=1)
    with torch.no_grad():
        table, inverse = spade._lookup_table(labels[:, 0])
        conv = spade.mlp_gamma_beta
        patterns, _ = _neighbourhoods(inverse, conv.kernel_size, conv.padding, fill=table.shape[0])
    need = lookup_bytes(
        patterns.shape[0], table.shape[0], patterns.shape[1], conv.out_channels, grad=False, itemsize=4
    )
    x = torch.randn(1, 2, 2, 8, 8)
    calls = []
    with torch.no_grad():
        for max_mb in (need / 2**20, (need - 1) / 2**20):
            bounded = SPADE(2, k, hidden=4, num_groups=1, lookup_max_mb=max_mb)
            bounded.load_state_dict(spade.state_dict())
            handle = bounded.mlp_gamma_beta.register_forward_hook(lambda *_, mb=max_mb: calls.append(mb))
            bounded(x, labels)
            handle.remove()
    assert calls == [(need - 1) / 2**20]  # only the bound below the need ran the conv


@pytest.mark.parametrize("max_mb", [-1.0, float("nan")])
def test_lookup_bound_must_be_a_non_negative_number(max_mb) -> None:
    with pytest.raises(ValueError, match="lookup_max_mb"):
        SPADE(2, 3, lookup_max_mb=max_mb)


def test_vqgan_bound_and_recompute_reach_every_spade() -> None:
    from vq_gan_3d.module import VQGANModule

    model = VQGANModule(
        label_nc=3, decoder="spade", n_hiddens=4, downsample=[2, 2, 2], n_codes=8, spade_hidden=4,
        perceptual_weight=0.0, disc_channels=4, disc_layers=1, spade_lookup_max_mb=2.5, spade_recompute=True,
    )  # fmt: skip
    spades = [m for m in model.modules() if isinstance(m, SPADE)]
    assert len(spades) > 2 and {m.lookup_max_bytes for m in spades} == {2.5 * 2**20}
    assert all(m.recompute for m in spades)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("lookup", [True, False])
def test_recompute_gives_the_same_output_and_gradients_and_saves_less(lookup) -> None:
    # The recomputed modulation runs the same ops on the same inputs, so output and gradients are bit-identical;
    # what autograd keeps shrinks to (gamma, beta) plus the inputs: no hidden map, no lookup rows.
    torch.manual_seed(11)
    k = 5
    plain = SPADE(6, k, hidden=16, num_groups=2, lookup=lookup)
    lean = SPADE(6, k, hidden=16, num_groups=2, lookup=lookup, recompute=True)
    lean.load_state_dict(plain.state_dict())
    labels = _blocky_labels(2, k, (8, 12, 12))
    seg = labels if lookup else _onehot(labels, k)
    x = torch.randn(2, 6, 8, 12, 12)
    outs, saved = [], []
    for module in (plain, lean):
        xx = x.clone().requires_grad_()
        holder: dict[str, torch.Tensor] = {}
        saved.append(_saved_bytes(lambda m=module, xx=xx: holder.update(y=m(xx, seg))))  # noqa: B023
        y = holder["y"]
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xx.grad, [p.grad for p in module.parameters()]))
    (ya, gxa, gpa), (yb, gxb, gpb) = outs
    assert torch.equal(ya, yb)
    for a, b in zip([gxa, *gpa], [gxb, *gpb]):
        assert torch.equal(a, b)
    hidden_map_bytes = 2 * 16 * 8 * 12 * 12 * 4
    assert saved[1] + hidden_map_bytes <= saved[0]
    with torch.no_grad():  # no graph, nothing to recompute: the plain path
        torch.testing.assert_close(lean(x, seg), ya, rtol=0, atol=0)
