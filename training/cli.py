"""``sitenet pretrain | finetune | evaluate | baseline | uncertainty | export | study``: recipe file first, then ``--set key=value`` overrides.

``add_subcommands(subparsers)`` registers these subcommands on the ``sitenet`` parser (sitenet/cli.py);
``python -m training.cli ...`` runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

RECIPES = Path(__file__).with_name("recipes")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def pretrain_main(args: argparse.Namespace) -> int:
    """Run DIM pretraining from a recipe; prints the encoder folder."""
    from training.configs import PretrainConfig, load_recipe
    from training.pretrain import pretrain

    _setup_logging()
    print(pretrain(load_recipe(args.recipe, args.set or [], kind=PretrainConfig)))
    return 0


def finetune_main(args: argparse.Namespace) -> int:
    """Fine-tune a head from a recipe; prints the model folder."""
    from training.configs import FinetuneConfig, load_recipe
    from training.finetune import finetune

    _setup_logging()
    print(finetune(load_recipe(args.recipe, args.set or [], kind=FinetuneConfig)))
    return 0


def _data_config(sets: list[str] | None):
    """A DataConfig from ``--set data.key=value`` items (the ``data.`` prefix is optional)."""
    from training.configs import DataConfig

    overrides = {}
    for item in sets or []:
        key, _, value = item.partition("=")
        overrides[key.removeprefix("data.")] = value
    return DataConfig.model_validate(overrides)


def evaluate_main(args: argparse.Namespace) -> int:
    """Score a fine-tuned model folder on the held-out split, every target it predicts: writes <output>.json
    and <output>.png (a multi-task model: <output>-<target>.json and .png per target)."""
    from sitenet.config import RegressorConfig
    from training.data import load_corpus
    from training.evaluate import evaluate

    _setup_logging()
    data = _data_config(args.set)
    output = args.output or str(Path(args.model).with_name(Path(args.model).name + "-eval"))
    config = RegressorConfig.model_validate_json((Path(args.model) / "config.json").read_text(encoding="utf-8"))
    corpus = load_corpus(data)
    for target in config.targets:
        path = output if len(config.targets) == 1 else f"{output}-{target.replace('_', '-')}"
        print(json.dumps(evaluate(args.model, path, data=data, corpus=corpus, target=target), indent=2))
    return 0


def study_main(args: argparse.Namespace) -> int:
    """Run the label-masking study (``--quick``: the bundled sample, about a minute)."""
    from training.configs import StudyConfig, load_recipe
    from training.study import run_study

    _setup_logging()
    recipe = RECIPES / "study_quick.yaml" if args.quick else args.recipe
    cfg = load_recipe(recipe, args.set or [], kind=StudyConfig)
    if args.rows:
        import pandas as pd

        from training.study import study_rows

        ids, cifs = study_rows(cfg)
        pd.DataFrame({"id": ids, "cif": cifs}).to_csv(args.rows, index=False)
        print(json.dumps({"rows": len(ids), "output": args.rows}))
        return 0
    if args.report:
        from training.study import report

        result = report(cfg)
        print(json.dumps({"runs": len(result["runs"]), "complete": result["complete"], "output": cfg.output}))
        return 0
    result = run_study(cfg)
    print(json.dumps({"runs": len(result["runs"]), "complete": result["complete"], "output": cfg.output}))
    return 0


def baseline_main(args: argparse.Namespace) -> int:
    """Magpie + random forest on the zoo recipes' training labels, scored on the held-out split."""
    from training.magpie import evaluate_baseline, write_results

    _setup_logging()
    data = _data_config(args.set)
    results = evaluate_baseline(data, targets=tuple(args.targets), trees=args.trees, seed=args.seed)
    command = "sitenet baseline" + "".join(f" --set {s}" for s in args.set or [])
    write_results(results, args.output, command)
    print(json.dumps(results, indent=2))
    return 0


def uncertainty_main(args: argparse.Namespace) -> int:
    """Add the nearest-crystal index and calibrated uncertainty to a fine-tuned model folder."""
    from training.uncertainty import add_uncertainty

    _setup_logging()
    folder = add_uncertainty(args.model, args.output)
    print(json.dumps(json.loads((folder / "uncertainty.json").read_text(encoding="utf-8")), indent=2))
    return 0


def export_main(args: argparse.Namespace) -> int:
    """Re-export a saved torch model folder (``training.publish``)."""
    from training.publish import export_command

    return int(export_command(args) or 0)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register pretrain / finetune / evaluate / study on a parser's subparsers."""
    overrides = dict(action="append", metavar="KEY=VALUE", help="override a recipe value (dotted keys for sections)")
    p = subparsers.add_parser("pretrain", help="Deep InfoMax pretraining of an encoder")
    p.add_argument("recipe", nargs="?", default=str(RECIPES / "dim_mp2018.yaml"))
    p.add_argument("--set", **overrides)
    p.set_defaults(func=pretrain_main)

    p = subparsers.add_parser("finetune", help="train a property head on an encoder")
    p.add_argument("recipe", help="e.g. training/recipes/finetune_band_gap.yaml")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=finetune_main)

    p = subparsers.add_parser("evaluate", help="score a fine-tuned model on the held-out split")
    p.add_argument("model", help="a SiteNetRegressor folder")
    p.add_argument("--output", "-o", default=None, help="path stem of the JSON and PNG (default <model>-eval)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="data settings, e.g. data.path=...")
    p.set_defaults(func=evaluate_main)

    p = subparsers.add_parser("baseline", help="Magpie composition features + random forest, the bar to clear")
    p.add_argument("--targets", nargs="+", default=["band_gap", "formation_energy"])
    p.add_argument("--trees", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", default="benchmarks/results/magpie_baseline", help="path stem of JSON and MD")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="data settings, e.g. data.path=...")
    p.set_defaults(func=baseline_main)

    p = subparsers.add_parser("uncertainty", help="add a nearest-crystal index and calibrated uncertainty to a "
                              "fine-tuned model folder (neighbours.safetensors, neighbours.json)")
    p.add_argument("model", help="a SiteNetRegressor run folder (with its training.json)")
    p.add_argument("--output", "-o", default=None, help="write a copy here instead of into MODEL")
    p.set_defaults(func=uncertainty_main)

    p = subparsers.add_parser(
        "export",
        help="re-export a saved torch model folder: ONNX (parity-checked), card, manifest",
        description="Re-export a saved torch model folder (config.json + model.safetensors): writes model.onnx "
                    "after an ONNX-vs-PyTorch parity check, rebuilds the card and manifest.json.",
    )
    p.add_argument("model", metavar="MODEL_FOLDER", help="folder with config.json + model.safetensors")
    p.add_argument("--output", "-o", default=None, help="destination folder (default: rewrite MODEL_FOLDER)")
    p.add_argument("--eval", action="append", default=[], help="evaluation JSON (sitenet evaluate) to render the "
                   "card from; repeatable, one per target")
    p.add_argument("--name", default=None, help="model name in the card (default: the output folder's name)")
    p.set_defaults(func=export_main)

    p = subparsers.add_parser("study", help="the label-masking study")
    p.add_argument("recipe", nargs="?", default=str(RECIPES / "study.yaml"))
    p.add_argument("--quick", action="store_true", help="the whole pipeline on the bundled sample")
    p.add_argument("--rows", default=None, metavar="CSV", help="only write the id and CIF of every crystal the "
                   "study reads (for an embedding_files entry computed elsewhere, e.g. CHGNet's) and stop")
    p.add_argument("--report", action="store_true", help="only rewrite <output>.md and .png from <output>.json "
                   "(a running or interrupted study)")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=study_main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.cli")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
