"""Crystal embeddings (``sitenet embed``): CIF files in, a CSV or NPY file out.

An encoder model (the zoo's, a folder, a Hub id) runs on ONNX Runtime through ``sitenet.predict.Predictor``, the
service's path, so no torch is needed; a random encoder (``random``) or a regressor folder's encoder runs in
PyTorch."""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sitenet.batch import bucket_batches, collate
from sitenet.errors import SiteNetError
from sitenet.features import CrystalFeatures, featurize
from sitenet.structure import read_structure


def load_encoder(model: str = "sitenet-dim-mp2018", *, seed: int = 0):
    """A ``SiteNetEncoder`` in eval mode: randomly initialised (``"random"``, seeded) or ``from_pretrained``.

    A regressor folder (encoder plus head) gives its encoder."""
    import torch

    from sitenet.config import SiteNetConfig
    from sitenet.hub import resolve
    from sitenet.model import SiteNetEncoder

    if model == "random":
        torch.manual_seed(seed)
        return SiteNetEncoder(SiteNetConfig()).eval()
    return _torch_encoder(resolve(model))


def _torch_encoder(folder: Path):
    from sitenet.hub import model_type
    from sitenet.model import SiteNetEncoder, SiteNetRegressor

    if model_type(folder) == "sitenet-regressor":
        return SiteNetRegressor.from_pretrained(folder).encoder.eval()
    return SiteNetEncoder.from_pretrained(folder).eval()


def _onnx_encoder(folder: Path) -> bool:
    """Whether the folder is an encoder with an ONNX graph (the torch-free path)."""
    from sitenet.hub import model_type

    return model_type(folder) == "sitenet" and (folder / "model.onnx").is_file()


def embed_features(encoder, features: Sequence[CrystalFeatures], *, batch_size: int = 64) -> np.ndarray:
    """(M, E) embeddings of featurised crystals, in input order (batched by size internally)."""
    import torch

    from sitenet.model import to_tensors

    spec = encoder.config.features
    out = np.zeros((len(features), encoder.config.embedding_dim), dtype=np.float32)
    with torch.no_grad():
        for idx in bucket_batches([(f.n_primitive, f.n_sites) for f in features], batch_size=batch_size):
            batch = collate([features[i] for i in idx], spec)
            out[idx] = encoder(**to_tensors(batch)).embedding.numpy()
    return out


def embed_files(
    paths: Sequence[str], *, output: Path, model: str = "sitenet-dim-mp2018", seed: int = 0, batch_size: int = 64
) -> int:
    """Embed CIF files; write ``output`` (.csv: id, formula, n_sites, e0..; .npy: (M, E) array) and list every
    rejected file with its reason in ``<output stem>.rejected.csv``. Returns 0, or 1 if nothing was embedded."""
    kept: list[tuple[str, str, int]] = []
    rejected: list[tuple[str, str, str]] = []
    from sitenet.hub import resolve

    folder = None if model == "random" else resolve(model)  # resolved (and verified) once
    if folder is not None and _onnx_encoder(folder):
        from sitenet.predict import Predictor, Rejection

        with Predictor.from_pretrained(folder, None, None) as predictor:
            predictor.batch_size = batch_size
            results = predictor.predict([Path(p) for p in paths], targets=(), return_embedding=True)
        vectors = []
        for path, r in zip(paths, results):
            if isinstance(r, Rejection):
                rejected.append((path, r.code, r.message))
            else:
                kept.append((path, r.formula, r.n_sites))
                vectors.append(r.embedding)
        embeddings = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, 0))
    else:
        encoder = load_encoder(model, seed=seed) if folder is None else _torch_encoder(folder)
        spec = encoder.config.features
        features: list[CrystalFeatures] = []
        for path in paths:
            try:
                structure = read_structure(Path(path))
                features.append(featurize(structure, spec=spec))
                kept.append((path, structure.composition.reduced_formula, len(structure)))
            except SiteNetError as err:
                rejected.append((path, err.code, err.message))
        embeddings = embed_features(encoder, features, batch_size=batch_size) if features else np.zeros((0, 0))
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        np.save(output, embeddings)
    else:
        with output.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "formula", "n_sites", *[f"e{k}" for k in range(embeddings.shape[1])]])
            for (path, formula, n), row in zip(kept, embeddings):
                writer.writerow([path, formula, n, *[f"{v:.6g}" for v in row]])
    if rejected:
        report = output.with_name(output.stem + ".rejected.csv")
        with report.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "code", "message"])
            writer.writerows(rejected)
        for path, code, message in rejected:
            print(f"rejected {path}: {code}: {message}", file=sys.stderr)
    print(f"embedded {len(kept)} of {len(paths)} CIF(s) with {model!r} -> {output}", file=sys.stderr)
    return 0 if kept else 1
