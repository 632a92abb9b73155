"""perov5 as a user's own CSV: both files of ``../shared/data/perov5`` in one table, heat of formation in eV/atom.

    python scripts/perov5_csv.py ../shared/data/perov5 runs/perov5/perov5.csv.gz

Columns: material_id, formula, heat_of_formation (CDVAE's ``heat_ref``, eV per 5-atom cell, divided by 5), cif.
The label-masking study's perov5 recipe (training/recipes/study_perov5.yaml) reads it; the bundled 120-row
sample (data/perov5-sample) was made the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

FILES = ("perov_5_dev_train.csv.gz", "perov_5_val.csv.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the folder with CDVAE's perov_5 CSV files")
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    frame = pd.concat([pd.read_csv(args.source / name, index_col=0) for name in FILES], ignore_index=True)
    if frame["material_id"].duplicated().any():
        raise SystemExit(f"{args.source}: material ids repeat across {FILES}")
    frame["heat_of_formation"] = frame["heat_ref"] / 5
    args.output.parent.mkdir(parents=True, exist_ok=True)
    frame[["material_id", "formula", "heat_of_formation", "cif"]].to_csv(args.output, index=False)
    print(f"{len(frame)} rows -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
