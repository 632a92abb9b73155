"""The ``sitenet`` command. Each subcommand imports what it needs when it runs, so ``sitenet --help`` is
instant and the serving install (no torch) can still featurise and predict."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _featurize(args: argparse.Namespace) -> int:
    from collections import Counter

    from sitenet.cache import build_features
    from sitenet.dataset import default_data_path, read_dataset
    from sitenet.features import FeatureSpec

    data = Path(args.data) if args.data else default_data_path()
    dataset = read_dataset(data, id_column=args.id_column, cif_column=args.cif_column,
                           file_column=args.file_column, cif_root=args.cif_root, targets=[])
    spec = FeatureSpec(max_atoms=args.max_atoms)
    store = build_features(dataset.ids, dataset.cifs, args.cache, spec=spec, workers=args.workers,
                           max_sites=args.max_sites)
    codes = Counter(r.code for r in store.rejected)
    print(json.dumps({"data": str(data), "cache": str(store.folder), "crystals": len(dataset),
                      "featurised": len(store), "rejected": len(store.rejected), "rejected_by_code": codes,
                      "report": str(store.folder / "rejected.csv")}, indent=2))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from sitenet.embed import embed_files

    return embed_files(args.cifs, output=Path(args.output), model=args.model, seed=args.seed,
                       batch_size=args.batch_size)


def _delegate(module: str, function: str):
    """A handler that imports ``module`` only when its subcommand runs (training needs torch)."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sitenet", description="Site-Net with Deep InfoMax pretraining.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("featurize", help="featurise a data set into the on-disk feature cache")
    p.add_argument("--data", help="CSV(.gz) with ids and CIFs (default: $SITENET_DATA, else mp2018)")
    p.add_argument("--cache", default="cache/features", help="cache root folder")
    p.add_argument("--id-column", default=None)
    p.add_argument("--cif-column", default="cif")
    p.add_argument("--file-column", default=None, help="column of CIF file names (instead of CIF text)")
    p.add_argument("--cif-root", default=None, help="folder or .zip holding the CIF files")
    p.add_argument("--max-atoms", type=int, default=50, help="supercell atom cap")
    p.add_argument("--max-sites", type=int, default=500, help="reject input cells with more sites")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_featurize)

    p = sub.add_parser("embed", help="embed CIF files with an encoder (zoo name, folder, Hub id, or random)")
    p.add_argument("cifs", nargs="+", help="CIF files")
    p.add_argument("--model", default="random", help="'random', a zoo name, a model folder or a Hub repo id")
    p.add_argument("--output", "-o", default="embeddings.csv", help=".csv or .npy")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_embed)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
