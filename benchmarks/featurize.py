"""Featurisation and encoder speed on real MP structures (issue: core). Prints its figures; writes a JSON.

    python benchmarks/featurize.py                  # the whole data set ($SITENET_DATA, else mp2018)
    python benchmarks/featurize.py --limit 2000     # a quicker look

Per structure, single process: CIF parsing and validation (``read_structure``), featurisation from the parsed
structure (primitive cell, supercell at cap 50, distances, element properties) and padding into batches of 64.
Medians are over all structures; throughput is structures per second per core (one process).
"""

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sitenet.batch import bucket_batches, collate
from sitenet.dataset import default_data_path, read_dataset
from sitenet.features import FeatureSpec, featurize
from sitenet.structure import read_structure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/featurize.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    data = Path(args.data) if args.data else default_data_path()
    ds = read_dataset(data)
    cifs = ds.cifs[: args.limit] if args.limit else ds.cifs
    spec = FeatureSpec()
    parse_t, feat_t, feats = [], [], []
    for cif in tqdm(cifs, desc="parse+featurise", unit="crystal"):
        t0 = time.perf_counter()
        structure = read_structure(cif)
        t1 = time.perf_counter()
        feats.append(featurize(structure, spec=spec))
        t2 = time.perf_counter()
        parse_t.append(t1 - t0)
        feat_t.append(t2 - t1)
    batches = bucket_batches([(f.n_primitive, f.n_sites) for f in feats], batch_size=64)
    t0 = time.perf_counter()
    padded = [collate([feats[i] for i in b], spec) for b in batches]
    collate_s = time.perf_counter() - t0
    waste = float(np.mean([b.padding_fraction for b in padded]))
    result = {
        "data": str(data), "structures": len(cifs), "cap": spec.max_atoms,
        "parse_median_ms": 1e3 * float(np.median(parse_t)),
        "parse_per_s_per_core": len(cifs) / float(np.sum(parse_t)),
        "featurize_median_ms": 1e3 * float(np.median(feat_t)),
        "featurize_per_s_per_core": len(cifs) / float(np.sum(feat_t)),
        "collate_per_structure_ms": 1e3 * collate_s / len(cifs),
        "featurize_plus_collate_per_s_per_core": len(cifs) / (float(np.sum(feat_t)) + collate_s),
        "padding_fraction_batch64": waste,
    }
    result.update(_encoder_speed(feats))
    result.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                   "command": "python benchmarks/featurize.py" + (f" --limit {args.limit}" if args.limit else "")})
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for k, v in result.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")


def _encoder_speed(feats) -> dict:
    """DIM-configuration encoder forward on CPU at batch 64 over size-bucketed batches (median of 3 passes)."""
    import torch

    from sitenet.config import SiteNetConfig
    from sitenet.model import SiteNetEncoder, to_tensors

    torch.manual_seed(0)
    model = SiteNetEncoder(SiteNetConfig()).eval()
    sample = feats[: min(len(feats), 2048)]
    batches = [collate([sample[i] for i in b], model.config.features)
               for b in bucket_batches([(f.n_primitive, f.n_sites) for f in sample], batch_size=64)]
    rates = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            for b in batches:
                model(**to_tensors(b))
            rates.append(len(sample) / (time.perf_counter() - t0))
    return {"encoder_forward_per_s_batch64": float(np.median(rates)), "encoder_threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
