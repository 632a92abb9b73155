"""Regenerate the symbol-only CIFs in this folder: ``python tests/data/symbol_only/make_symbol_only.py``.

One real crystal per space group found in the mp2018 sample (``data/mp2018-sample``), symmetrised by
pymatgen's ``CifWriter(symprec=0.01)`` and then ``symprec=0.1`` (which finds higher symmetry for some), with
the symmetry-operation loop removed, so that the symmetry is given only by the space-group name (and number),
as many CIFs from other tools give it. Named ``sg<number>_<material id>_<symprec>.cif``, with the first
crystal in sample order for each group. Deterministic: rerunning leaves the files byte-for-byte unchanged.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[2] / "data" / "mp2018-sample" / "mp2018_sample.csv.gz"
#: The loop CifWriter writes: the site ids and xyz operations, one row each.
OPERATION_LOOP = re.compile(r"loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n(?:  \d+  '[^']*'\n)+")


def symbol_only(text: str) -> str:
    """A CifWriter CIF without its operation loop."""
    stripped, n = OPERATION_LOOP.subn("", text)
    if n != 1:
        raise ValueError("no operation loop of CifWriter's form found")
    return stripped


def main() -> None:
    import pandas as pd
    from pymatgen.io.cif import CifParser, CifWriter

    frame = pd.read_csv(SAMPLE)
    seen: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for material_id, cif in zip(frame.material_id, frame.cif):
            structure = CifParser.from_str(cif).parse_structures(primitive=False)[0]
            for symprec in ("0.01", "0.1"):
                text = str(CifWriter(structure, symprec=float(symprec)))
                name = re.search(r"_symmetry_space_group_name_H-M\s+(.+)", text).group(1).strip()
                number = int(re.search(r"_symmetry_Int_Tables_number\s+(\d+)", text).group(1))
                if name not in seen:
                    seen[name] = f"sg{number:03d}_{material_id}_{symprec}.cif"
                    (HERE / seen[name]).write_text(symbol_only(text))
    print(f"{len(seen)} space groups written to {HERE}")


if __name__ == "__main__":
    main()
