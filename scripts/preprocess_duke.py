"""Preprocess Duke Breast Cancer MRI (breast, fibroglandular tissue, vessels) into blocks with a manifest.

Raw layout: SRC/<patient>/{mr,breast,dense_and_vessels}.nii.gz; segmentation files may be 3-D label maps or
4-D multi-segment files (see dataset/label_tables/duke.yaml for which value/layer is which class). Example:

    python scripts/preprocess_duke.py --src RAW/duke_nifti --dst data/duke
"""

from __future__ import annotations

from dataset.duke import preprocess_duke
from dataset.preprocess_cli import build_parser, run_preprocess


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the preprocessing; returns the exit code."""
    parser = build_parser("preprocess_duke", __doc__, modality="mr")
    return run_preprocess(
        parser,
        argv,
        lambda args, options: preprocess_duke(args.src, args.dst, options, table=args.label_table or "duke"),
    )


if __name__ == "__main__":
    raise SystemExit(main())
