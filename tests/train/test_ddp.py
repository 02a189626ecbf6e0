"""Two-process CPU DDP (gloo) of each stage: both ranks must end with identical weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.helpers import TINY_DIFFUSION, TINY_VQGAN, run_entry

pytestmark = pytest.mark.slow


def _digests(out: Path) -> list[dict]:
    files = sorted(out.glob("state_digest_rank*.json"))
    return [json.loads(f.read_text()) for f in files]


def _ddp(entry: str, base: list[str], out: Path, extra: list[str]) -> list[dict]:
    run_entry(
        entry,
        [
            *base,
            "trainer=ddp_cpu",
            "trainer.max_steps=4",
            f"paths.output_dir={out}",
            f"paths.data_dir={out.parent / 'data'}",
            "+callbacks.state_digest._target_=train.callbacks.StateDigest",
            f"+callbacks.state_digest.out_dir={out}",
            *extra,
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    return _digests(out)


@pytest.fixture(scope="module")
def ddp_vqgan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "vqgan"
    digests = _ddp("train_vqgan", TINY_VQGAN, out, [])
    assert [d["rank"] for d in digests] == [0, 1]
    return out


def test_vqgan_ddp_ranks_agree(ddp_vqgan: Path) -> None:
    d0, d1 = _digests(ddp_vqgan)
    assert d0["world_size"] == d1["world_size"] == 2
    assert d0["global_step"] == d1["global_step"] == 4
    assert d0["sha256"] == d1["sha256"], "weights (incl. codebook buffers) differ between DDP ranks"


def test_diffusion_ddp_ranks_agree(ddp_vqgan: Path, tmp_path: Path) -> None:
    out = tmp_path / "diffusion"
    d0, d1 = _ddp(
        "train_diffusion", TINY_DIFFUSION, out, [f"model.first_stage_ckpt={ddp_vqgan / 'checkpoints' / 'last.ckpt'}"]
    )
    assert d0["world_size"] == 2 and d0["global_step"] == d1["global_step"] == 4
    assert d0["sha256"] == d1["sha256"], "weights (incl. EMA and latent statistics) differ between DDP ranks"


def test_labels_stage_ddp_ranks_agree(tmp_path: Path) -> None:
    """The label autoencoder, then the label diffusion on it (attribute statistics included), on two ranks."""
    from tests.train.helpers import TINY_LABELS

    ae = tmp_path / "label_ae"
    d0, d1 = _ddp("train_label_ae", [*TINY_LABELS, "model=label_ae_tiny"], ae, [])
    assert d0["world_size"] == 2 and d0["global_step"] == d1["global_step"] == 4
    assert d0["sha256"] == d1["sha256"], "label autoencoder weights differ between DDP ranks"
    extra = ["model.stats_batches=2", f"model.label_ae_ckpt={ae / 'checkpoints' / 'last.ckpt'}"]
    d0, d1 = _ddp("train_label_diffusion", [*TINY_LABELS, "model=label_diffusion_tiny"], tmp_path / "diffusion", extra)
    assert d0["world_size"] == 2 and d0["global_step"] == d1["global_step"] == 4
    assert d0["sha256"] == d1["sha256"], "label diffusion weights (incl. EMA and attribute statistics) differ"
