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
