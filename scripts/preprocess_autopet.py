"""Preprocess AutoPET CT into normalised blocks with a manifest and patient-level splits.

Raw layout: SRC/<case>_0001.nii.gz (CT, HU) + SRC/<case>_0002.nii.gz (labels 0-36); an SRC/imagesTr/ subfolder
is used if present. Example:

    python scripts/preprocess_autopet.py --src RAW/imagesTr --dst data/autopet --seed 0
"""

from __future__ import annotations

from dataset.autopet import preprocess_autopet
from dataset.preprocess_cli import build_parser, run_preprocess


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the preprocessing; returns the exit code."""
    parser = build_parser("preprocess_autopet", __doc__, modality="ct")
    parser.add_argument(
        "--patient-regex",
        default=None,
        help="regex whose first group extracts the patient id from a case id, so a patient's studies share a split "
        "(default: AutoPET naming, PETCT_<hash>_<study> -> patient PETCT_<hash>; '^(.*)$' = one patient per case)",
    )
    return run_preprocess(
        parser,
        argv,
        lambda args, options: preprocess_autopet(
            args.src, args.dst, options, patient_regex=args.patient_regex, table=args.label_table or "autopet"
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
