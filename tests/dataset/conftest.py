"""Dataset tests keep the label-range cache (dataset.nifti_pairs.label_cache_path) in pytest's temp folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dataset.nifti_pairs import CACHE_ENV


@pytest.fixture(autouse=True, scope="session")
def _label_cache_in_tmp(tmp_path_factory) -> Iterator[None]:
    """Point ``MEDLSDM_CACHE_DIR`` at a session temp folder so test datasets do not fill ``~/.cache``."""
    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("medlsdm-cache")))
    yield
    mp.undo()
