"""Every NIfTI reader checks the size a header declares against the file and a voxel limit before allocating."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.arrayproxy import ArrayProxy

from dataset.contract import DataError
from dataset.describe import log_split_summary
from dataset.nifti import load_label, read_nifti
from dataset.nifti_size import MAX_VOXELS_ENV
from evaluation.nifti_io import read_header
from tests.dataset.fakes import write_nifti


def _header_only(path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> Path:
    """A NIfTI file that is nothing but a header declaring ``shape`` (gzipped when the name ends in .gz).

    NIfTI-2 when a dimension does not fit NIfTI-1's int16 (100000 does not).
    """
    header = nib.Nifti2Header() if max(shape) > 32767 else nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = len(header.binaryblock) + 4
    raw = header.binaryblock + b"\0" * 4  # the header plus an empty extension block
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("reader", [read_nifti, read_header, load_label])
def test_tiny_file_declaring_1e10_voxels_is_refused_before_any_voxel_is_read(
    tmp_path: Path, reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _header_only(tmp_path / "bomb.nii.gz", (100000, 100000, 1))
    assert path.stat().st_size < 150

    def no_voxels(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("voxel data was read (allocating the declared size) before the size check")

    # every way nibabel turns a file into an array goes through the array proxy
    monkeypatch.setattr(ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(ArrayProxy, "__getitem__", no_voxels)
    with pytest.raises(DataError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}: header declares 100000x100000x1 = 10000000000 voxels")
    assert MAX_VOXELS_ENV in message and "\n" not in message


def test_declared_size_beyond_what_the_gzip_can_hold(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(MAX_VOXELS_ENV, str(10**12))  # past the limit, the file bound still refuses it
    path = _header_only(tmp_path / "bomb.nii.gz", (100000, 100000, 1))
    with pytest.raises(DataError, match="more than a [0-9]+-byte gzip file can hold"):
        read_nifti(path)
    with pytest.raises(DataError, match="more than a [0-9]+-byte gzip file can hold"):
        read_header(path)


def test_gzip_trailer_and_truncated_raw_file(tmp_path: Path) -> None:
    # 200x200x50 float32 = 8 MB declared, within the deflate bound of a zero-filled stream but not the trailer.
    header_only = _header_only(tmp_path / "short.nii.gz", (200, 200, 50))
    padded = tmp_path / "padded.nii.gz"  # enough compressed bytes to pass the ratio bound, far too few voxels
    padded.write_bytes(gzip.compress(gzip.decompress(header_only.read_bytes()) + b"\0" * 8192, compresslevel=0))
    with pytest.raises(DataError, match="decompresses to [0-9]+ bytes"):
        read_nifti(padded)
    full = write_nifti(tmp_path / "ok.nii", np.zeros((6, 5, 4), np.float32))
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(full.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"cut.nii: header declares 6x5x4 float32 voxels \(832 bytes.*file has 824"):
        read_nifti(truncated)
    assert read_nifti(full)[0].shape == (6, 5, 4)


def test_multi_member_gzip_is_counted_not_refused(tmp_path: Path) -> None:
    # bgzip-style files are several gzip members: the trailer holds only the last member's size.
    src = write_nifti(tmp_path / "one.nii", np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4))
    raw = src.read_bytes()
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    np.testing.assert_array_equal(read_nifti(multi)[0], read_nifti(src)[0])


def test_voxel_limit_is_configurable(tmp_path: Path, monkeypatch) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", np.zeros((6, 5, 4), np.float32))
    monkeypatch.setenv(MAX_VOXELS_ENV, "100")
    with pytest.raises(DataError, match="6x5x4 = 120 voxels, more than the limit of 100"):
        read_nifti(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "120")
    assert read_nifti(path)[0].shape == (6, 5, 4)
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(ValueError, match="MEDLSDM_MAX_VOXELS='lots' must be a positive integer"):
        read_nifti(path)


def test_split_summary_checks_declared_sizes(tmp_path: Path) -> None:
    bomb = _header_only(tmp_path / "bomb.nii.gz", (100000, 100000, 1))
    with pytest.raises(DataError, match="header declares 100000x100000x1"):
        log_split_summary("x", "train", [bomb], None, None)
