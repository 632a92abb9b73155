"""Reading CIFs that give their symmetry only by space-group symbol (``tests/data/symbol_only``, one real MP
crystal per space group of the sample, 93 groups): ``sitenet.structure.read_crystal`` (its own expansion with
pymatgen's operations) against pymatgen's ``CifParser``, each file timed once per pass after one warm-up pass
(both keep their per-process caches), median of the per-file times and the slowest file.

    .venv/bin/python benchmarks/cif_read.py
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from pymatgen.io.cif import CifParser

    from sitenet.structure import read_crystal

    texts = [p.read_text() for p in sorted((REPO / "tests" / "data" / "symbol_only").glob("*.cif"))]

    def pymatgen(text: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CifParser.from_str(text).parse_structures(primitive=False)

    times: dict[str, list[float]] = {}
    for name, read in (("sitenet read_crystal", read_crystal), ("pymatgen CifParser", pymatgen)):
        for text in texts:  # warm-up: imports and caches
            read(text)
        for text in texts:
            start = time.perf_counter()
            read(text)
            times.setdefault(name, []).append(time.perf_counter() - start)
    print(f"{len(texts)} symbol-only CIFs, one per space group")
    print("| reader | median ms | slowest ms |\n|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {1e3 * statistics.median(values):.1f} | {1e3 * max(values):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
