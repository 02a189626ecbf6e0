"""The pipeline drivers' stage runner (``train.stages``): a failed stage is one line with its exit status."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train import stages


def test_a_failed_stage_is_one_line_with_its_exit_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stage that exits non-zero stops the driver with its status and one log line, not a traceback."""
    commands: list[str] = []
    log_file = tmp_path / "stage.log"

    @stages.report_failure
    def driver(argv: list[str] | None = None) -> int:
        stages.run([sys.executable, "-c", "import sys; print('own error'); sys.exit(3)"], commands, log_file)
        return 0

    assert driver([]) == 3
    assert "own error" in log_file.read_text() and len(commands) == 1
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "exit status 3" in record.getMessage() and str(log_file) in record.getMessage()
    failing = stages.Background(lambda: stages.run([sys.executable, "-c", "raise SystemExit(4)"], []))
    with pytest.raises(stages.StageFailed):  # a background stage's failure reaches the main thread
        failing.wait()


#: A stand-in training entry point: writes last.ckpt with the global step it was told to reach (or fewer, as a
#: stage stopped early by its time cap would), from the overrides train_stage adds.
FAKE_TRAINING = """
import sys, torch
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[1:])
out = Path(args["paths.output_dir"]) / "checkpoints"
out.mkdir(parents=True)
torch.save({"global_step": min(int(args["trainer.max_steps"]), int(args["reach"]))}, out / "last.ckpt")
assert args["trainer.max_time"] == "00:00:01:30"
"""


@pytest.mark.parametrize(("reach", "capped"), [(40, False), (25, True)])
def test_train_stage_gives_the_step_budget_and_says_when_the_cap_stopped_it(
    tmp_path: Path, reach: int, capped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    commands: list[str] = []
    run_dir = tmp_path / "vqgan"
    note = stages.train_stage([sys.executable, "-c", FAKE_TRAINING, f"reach={reach}"], run_dir, 40, 1.5, commands)
    assert "trainer.max_steps=40" in commands[0] and f"paths.output_dir={run_dir}" in commands[0]
    assert stages.reached_steps(run_dir) == min(reach, 40)
    if capped:
        assert note == (
            "vqgan stopped at step 25 of its budget of 40: its safety cap of 1.5 min triggered, so the numbers that "
            "depend on it are not those of the fixed budget"
        )
        assert any(r.levelname == "WARNING" and r.getMessage() == note for r in caplog.records)
    else:
        assert note is None


def test_reached_steps_without_a_checkpoint_is_zero(tmp_path: Path) -> None:
    assert stages.reached_steps(tmp_path) == 0
