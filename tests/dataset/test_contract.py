"""The sample contract: one_hot known answers and validate_sample's checks."""

from __future__ import annotations

import pytest
import torch

from dataset.contract import DataError, one_hot, validate_sample


def _sample(**over) -> dict:
    sample = {
        "image": torch.zeros(1, 4, 5, 6),
        "label": torch.zeros(1, 4, 5, 6, dtype=torch.int64),
        "affine": torch.eye(4, dtype=torch.float64),
        "id": "s0",
    }
    sample.update(over)
    return sample


def test_one_hot_known_answer() -> None:
    label = torch.tensor([0, 2, 1, 2]).view(1, 1, 1, 2, 2)  # (B, 1, D, H, W)
    out = one_hot(label, 3)
    assert out.shape == (1, 3, 1, 2, 2) and out.dtype == torch.float32
    expected = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [1, 0]], [[0, 1], [0, 1]]], dtype=torch.float32)
    torch.testing.assert_close(out[0, :, 0], expected)
    assert torch.equal(out.sum(1), torch.ones(1, 1, 2, 2))
    assert one_hot(label[0], 3).shape == (3, 1, 2, 2)  # unbatched (1, D, H, W)
    # any integer dtype, a contiguous (B, K, D, H, W) map equal to F.one_hot's with K moved forward
    labels = torch.randint(0, 5, (2, 1, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.one_hot(labels[:, 0], 5).movedim(-1, 1).float()
    for dtype in (torch.int64, torch.uint8, torch.int16):
        out = one_hot(labels.to(dtype), 5)
        assert torch.equal(out, expected) and out.is_contiguous()


def test_one_hot_rejects_out_of_range_and_bad_shape() -> None:
    with pytest.raises(DataError, match=r"label batch: label values \[3\]"):
        one_hot(torch.full((1, 1, 2, 2, 2), 3), 3)
    with pytest.raises(ValueError):
        one_hot(torch.zeros(2, 2, 2, 2, 2, dtype=torch.int64), 3)


def test_valid_sample_passes() -> None:
    validate_sample(_sample(), 2)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"image": torch.zeros(1, 4, 5, 6, dtype=torch.float64)}, "float32"),
        ({"image": torch.zeros(4, 5, 6)}, "float32"),
        ({"label": torch.zeros(1, 4, 5, 6, dtype=torch.int32)}, "int64"),
        ({"label": torch.zeros(1, 4, 5, 5, dtype=torch.int64)}, "int64"),
        ({"affine": torch.eye(3)}, r"\(4, 4\)"),
        ({"image": torch.full((1, 4, 5, 6), float("nan"))}, "NaN"),
        ({"image": torch.full((1, 4, 5, 6), 1.5)}, r"outside \[-1, 1\]"),
        ({"label": torch.full((1, 4, 5, 6), 2, dtype=torch.int64)}, r"outside \[0, 2\)"),
    ],
    ids=["image-dtype", "image-rank", "label-dtype", "label-shape", "affine", "nan", "range", "label-nc"],
)
def test_invalid_samples_name_the_id(override: dict, match: str) -> None:
    with pytest.raises(DataError, match=f"s0: .*{match}"):
        validate_sample(_sample(**override), 2)


def test_missing_key() -> None:
    sample = _sample()
    del sample["affine"]
    with pytest.raises(DataError, match="s0: sample lacks key 'affine'"):
        validate_sample(sample, 2)
