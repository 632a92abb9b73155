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


def _push(args: argparse.Namespace) -> int:
    from sitenet.hub import push

    commit = push(Path(args.folder), args.repo_id, revision=args.revision, private=args.private)
    print(json.dumps({"repo_id": args.repo_id, "commit": commit}))
    return 0


def _pull(args: argparse.Namespace) -> int:
    from sitenet.hub import pull

    folder = pull(args.repo_id, revision=args.revision, local_dir=Path(args.local_dir) if args.local_dir else None)
    print(folder)
    return 0


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
    p.add_argument("--model", default="sitenet-dim-mp2018", help="a zoo name (default: the zoo's DIM encoder), a "
                   "model folder, a Hub repo id, or 'random' (seeded, untrained)")
    p.add_argument("--output", "-o", default="embeddings.csv", help=".csv or .npy")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=_embed)

    p = sub.add_parser("push", help="publish a model folder to the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN)")
    p.add_argument("folder")
    p.add_argument("--repo-id", required=True, help="ORG/NAME")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=_push)

    p = sub.add_parser("pull", help="download a model from the Hub (or the offline cache) and verify it")
    p.add_argument("repo_id", help="ORG/NAME")
    p.add_argument("--revision", default=None, help="branch, tag or commit sha")
    p.add_argument("--local-dir", default=None, help="write the files here instead of the HF cache")
    p.set_defaults(func=_pull)

    p = sub.add_parser("predict", help="predict band gap and formation energy of crystals (ONNX Runtime, no torch)")
    p.add_argument("cifs", nargs="+", metavar="INPUT", help="CIF files, folders of CIFs, .zip archives of CIFs or "
                   ".csv tables with a cif column")
    p.add_argument("--model", default=None, help="zoo name, folder or Hub repo id of one model (default: the zoo's "
                   "encoder and property models)")
    p.add_argument("--targets", nargs="+", default=None, metavar="TARGET",
                   help="properties to predict, e.g. band_gap formation_energy (default: all the model gives)")
    p.add_argument("--output", "-o", default="-", help=".json, .csv, or - for JSON on stdout")
    p.add_argument("--embedding", action="store_true", help="include the 64-d DIM embedding")
    p.add_argument("--uncertainty", action="store_true", help="add each target's calibrated standard deviation")
    p.add_argument("--neighbours", type=int, default=0, metavar="K", help="add the K nearest training crystals "
                   "(JSON output) and the in-domain score")
    p.add_argument("--workers", type=int, default=None, help="worker processes for parsing and featurisation")
    p.add_argument("--providers", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime providers")
    p.set_defaults(func=_delegate("sitenet.predict", "predict_main"))

    if _has_training():  # the serving install has no torch: training commands are absent
        from training.cli import add_subcommands  # argparse only; each command imports torch when it runs

        add_subcommands(sub)
    return parser


def _has_training() -> bool:
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("torch", "lightning", "training"))


def main(argv: Sequence[str] | None = None) -> int:
    from sitenet.errors import SiteNetError

    parser = build_parser()
    args = parser.parse_args(argv)
    # a bad model name or option of the inference commands: the reason, not a traceback (training keeps its
    # tracebacks: there a ValueError may be a bug)
    expected = (SiteNetError, ValueError) if args.command in _INFERENCE_COMMANDS else (SiteNetError,)
    try:
        return int(args.func(args) or 0)
    except expected as err:
        print(f"sitenet {args.command}: error: {err}", file=sys.stderr)
        return 2


_INFERENCE_COMMANDS = frozenset({"featurize", "embed", "push", "pull", "predict"})


if __name__ == "__main__":
    sys.exit(main())
