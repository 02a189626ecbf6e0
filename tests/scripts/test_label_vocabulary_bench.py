"""scripts/bench/vocabulary.py: raw ids vs the compacted table, both stages, alternated, on a tiny sparse folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench import vocabulary
from scripts.inspect_dataset import main as inspect_main
from tests.scripts.own_data import write_sparse_ct_folder


@pytest.mark.slow  # four tiny trainings (about 20 s on one core)
def test_raw_ids_and_table_are_both_measured_for_both_stages(tmp_path: Path) -> None:
    write_sparse_ct_folder(tmp_path / "ts", n_cases=4)
    cfg = tmp_path / "my_configs" / "dataset"
    cfg.mkdir(parents=True)
    assert inspect_main([str(tmp_path / "ts"), "--out", str(cfg / "ts.yaml")]) == 0
    out = tmp_path / "vocab.json"
    argv = ["--config-dir", str(tmp_path / "my_configs"), "--dataset", "ts", "--out", str(out)]
    assert vocabulary.main([*argv, "--steps", "1", "--warmup", "0", "--rounds", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["classes"] == {"table": 4, "raw": 118}
    for stage in ("vqgan", "diffusion"):
        res = report["results"][stage]
        assert (res["table"]["label_nc"], res["raw"]["label_nc"]) == (4, 118)
        assert all(res[v]["step_time_s"] > 0 and res[v]["peak_memory_mb"] > 0 for v in ("table", "raw"))
    assert "| vqgan |" in out.with_suffix(".md").read_text()
    assert vocabulary.main(argv) == 2  # the report exists: --overwrite needed
