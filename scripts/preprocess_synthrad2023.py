"""Preprocess SynthRAD2023 Task 1 pelvis MR (31 CT-derived classes) into blocks with a manifest.

Raw layout: SRC/<patient>/mr.nii.gz and LABELS/<patient>_ct_label.nii.gz (LABELS defaults to SRC/labels;
SRC/overview/ is ignored). Example:

    python scripts/preprocess_synthrad2023.py --src RAW/Task1/pelvis --labels RAW/synth2023_label \\
        --dst data/synthrad2023
"""

from __future__ import annotations

from dataset.preprocess_cli import build_parser, run_preprocess
from dataset.synthrad2023 import preprocess_synthrad2023


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the preprocessing; returns the exit code."""
    parser = build_parser("preprocess_synthrad2023", __doc__, modality="mr")
    parser.add_argument("--labels", default=None, help="folder of <patient>_ct_label.nii.gz (default: SRC/labels)")
    return run_preprocess(
        parser,
        argv,
        lambda args, options: preprocess_synthrad2023(
            args.src, args.dst, options, labels=args.labels, table=args.label_table or "synthrad2023"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
