"""CHGNet's pretrained crystal embedding of every crystal in a CSV (id, cif), for the label-masking study.

    python benchmarks/peers/chgnet_embeddings.py runs/study/rows.csv runs/study/chgnet.npz

The rows come from ``sitenet study RECIPE --rows runs/study/rows.csv``. CHGNet 0.3.0's weights ship inside the
``chgnet`` wheel; it runs in the peers' own virtual environment (``.venv-peers``, made by ``compare.py``'s
``ensure_venv``), never the project's. Output: ``ids`` and ``x`` (the crystal feature CHGNet returns with
``return_crystal_feas=True``, one row per id); a crystal CHGNet cannot read stops the script with its id, since the
study refuses an embedding file that lacks a crystal.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def embed(rows: Path, output: Path, batch_size: int, threads: int) -> None:
    """Inside the peers' environment: read the CSV, embed in batches with a progress bar, write the .npz."""
    import numpy as np
    import pandas as pd
    import torch
    from chgnet.model import CHGNet
    from pymatgen.core import Structure
    from tqdm import tqdm

    torch.set_num_threads(threads)
    frame = pd.read_csv(rows, dtype={"id": str})
    model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    vectors = []
    for start in tqdm(range(0, len(frame), batch_size), desc="CHGNet embeddings", unit="batch"):
        chunk = frame.iloc[start:start + batch_size]
        structures = []
        for crystal_id, cif in zip(chunk["id"], chunk["cif"]):
            try:
                structures.append(Structure.from_str(cif, fmt="cif"))
            except Exception as err:
                raise SystemExit(f"crystal {crystal_id}: CHGNet's pymatgen cannot read it: {err}") from err
        preds = model.predict_structure(structures, task="e", return_crystal_feas=True, batch_size=batch_size)
        preds = preds if isinstance(preds, list) else [preds]
        vectors += [np.asarray(p["crystal_fea"], dtype=np.float32) for p in preds]
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output, ids=frame["id"].to_numpy(dtype=str), x=np.stack(vectors))
    print(f"{len(vectors)} CHGNet embeddings ({vectors[0].shape[0]} wide) -> {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, help="CSV with columns id, cif")
    parser.add_argument("output", type=Path, help=".npz to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--venv", type=Path, default=HERE.parents[1] / ".venv-peers")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        embed(args.rows, args.output, args.batch_size, args.threads)
        return 0
    sys.path.insert(0, str(HERE))
    from compare import ensure_venv

    python = ensure_venv(args.venv)
    return subprocess.run([str(python), __file__, str(args.rows), str(args.output), "--batch-size",
                           str(args.batch_size), "--threads", str(args.threads), "--inside"]).returncode


if __name__ == "__main__":
    raise SystemExit(main())
