"""scripts/bench/distill.py: the command line refuses bad input before any work; the timing split restores."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.bench.distill import Stopwatch, parse_args, parse_named, split_timing


def test_named_options_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_named(["a=1", "b=x=y"], "--model") == {"a": "1", "b": "x=y"}
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        parse_named(["nothing"], "--model")
    ckpt = tmp_path / "t.ckpt"
    ckpt.write_bytes(b"")
    base = ["--demo", str(tmp_path), "--out", str(tmp_path / "o"), "--model", f"t={ckpt}"]
    for extra, message in ((["--steps", "t=1,x"], "comma-separated"), (["--steps", "u=1"], "names no --model"),
                           (["--steps", "t=1"], "not a finished demo run")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            parse_args([*base, *extra])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_split_timing_counts_the_wrapped_calls_and_restores_the_methods() -> None:
    class Schedule:
        def sample(self) -> int:
            return 1

    class FirstStage:
        def decode(self) -> int:
            return 2

    class Model:
        def __init__(self) -> None:
            self.schedule, self.first_stage = Schedule(), FirstStage()

    model = Model()
    with split_timing(model) as (denoise, decode):
        assert model.schedule.sample() == 1 and model.first_stage.decode() == 2
        assert "sample" in vars(model.schedule) and "decode" in vars(model.first_stage)
    assert isinstance(denoise, Stopwatch) and denoise.seconds > 0 and decode.seconds > 0
    assert "sample" not in vars(model.schedule) and "decode" not in vars(model.first_stage)
