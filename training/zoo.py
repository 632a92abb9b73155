"""The bundled model zoo: the DIM encoder and the regressors fine-tuned from it, assembled into ``zoo/``.

``build_zoo`` publishes each model folder (``training/publish.py``), writes its generated card to both
``zoo/<name>/README.md`` and ``model_cards/<name>.md``, lists everything in ``zoo/registry.json`` and pins
each model's outputs on three real crystals in ``tests/data/zoo_expected.json`` (the zoo regression test).

    python -m training.zoo --random          # seeded, untrained placeholders (clearly marked)
    python -m training.zoo --encoder RUN/encoder --model RUN --eval EVAL.json ...   # the trained runs

A regressor is named for what it predicts (``zoo_name``); every target of it needs an evaluation JSON
(``sitenet evaluate``), matched to it by the JSON's ``model`` folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sitenet.batch import Batch, collate
from sitenet.config import UNITS, RegressorConfig, dim_config
from sitenet.dataset import SAMPLE_PATH
from sitenet.features import FeatureSpec
from sitenet.hub import ZOO_DIR, verify_folder
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors
from training.cards import ORG, EvalReport, read_eval, render_card
from training.publish import Model, load_model, publish, sitenet_version

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CARDS_DIR = REPO_ROOT / "model_cards"
EXPECTED_PATH = REPO_ROOT / "tests" / "data" / "zoo_expected.json"
BASELINE_PATH = REPO_ROOT / "benchmarks" / "results" / "magpie_baseline.json"
REGISTRY_NAME = "registry.json"
ENCODER_NAME = "sitenet-dim-mp2018"
#: The trained runs ``python -m training.zoo`` assembles by default: the encoder, then the regressors.
DEFAULT_ENCODER = "runs/dim-mp2018/encoder"  # the DIM run at its best validation DIM loss (epoch 98 of 100)
#: Chosen per target on validation (benchmarks/results/zoo_candidates.md): the multi-task model (trained on from
#: the formation-energy model) for band gap, the single-target model for formation energy; they are the service's
#: defaults (``sitenet.predict.DEFAULT_MODELS``). The single-target band-gap model stays for comparison.
DEFAULT_REGRESSORS: tuple[str, ...] = ("runs/finetune-band-gap-v3", "runs/finetune-formation-energy-v3",
                                       "runs/finetune-multitask-v3")
#: The targets of each regressor the zoo ships (the random placeholders have the same layout).
LAYOUT: tuple[tuple[str, ...], ...] = (("band_gap",), ("formation_energy",), ("band_gap", "formation_energy"))


def zoo_name(targets: Sequence[str] = ()) -> str:
    """Zoo folder (= Hub repo) name: the encoder's, or ``<encoder>-<target>[-<target>...]`` for a regressor."""
    return "-".join([ENCODER_NAME, *(t.replace("_", "-") for t in targets)])


#: Files a run folder may hold that ship with its model: the nearest-crystal index and its uncertainty fits
#: (``sitenet uncertainty RUN``).
SHIPPED_RUN_FILES: tuple[str, ...] = ("neighbours.safetensors", "neighbours.json", "uncertainty.json")
#: Three real crystals of data/mp2018-sample for the pinned-output test: 1, 2 and 16 sites.
PINNED_IDS: tuple[str, ...] = ("mp-1", "mp-1009127", "mp-11582")


@dataclass(frozen=True)
class ZooModel:
    """One model to publish: where it comes from and how it was evaluated (a regressor: once per target)."""

    name: str
    model: Model
    trained: bool
    evaluations: tuple[EvalReport, ...] = ()
    eval_paths: tuple[Path, ...] = ()
    source: str | None = None
    training: dict[str, Any] | None = None  # shipped as training.json: resolved run config and split counts
    source_folder: Path | None = None  # the run folder, for SHIPPED_RUN_FILES

    @property
    def targets(self) -> tuple[str, ...]:
        """What the model predicts; () for the encoder."""
        return () if isinstance(self.model, SiteNetEncoder) else self.model.config.targets

    def plots(self) -> dict[str, tuple[str, Path]]:
        """target -> (file name in the model folder, source file) of each evaluated target's parity plot."""
        out = {}
        for report, path in zip(self.evaluations, self.eval_paths):
            plot = report.plot_path(path)
            if plot is not None:
                out[report.target] = (f"parity-{report.target.replace('_', '-')}.png", plot)
        return out


def random_models(seed: int = 0) -> list[ZooModel]:
    """Seeded random-init placeholders: the DIM encoder (method.md C.2/C.4) and the regressors of
    :data:`LAYOUT` built on it with ``from_encoder``."""
    torch.manual_seed(seed)
    encoder = SiteNetEncoder(dim_config()).eval()
    models = [ZooModel(zoo_name(), encoder, trained=False)]
    for targets in LAYOUT:
        torch.manual_seed(seed + 1 + len(models))
        head = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, targets=targets))
        models.append(ZooModel(zoo_name(targets), head.eval(), trained=False))
    return models


def trained_models(encoder: Path, regressors: Sequence[Path], evals: Sequence[Path]) -> list[ZooModel]:
    """The trained runs: an encoder folder and regressor folders (``save_pretrained`` folders), with an
    evaluation JSON for every target of every regressor.

    Raises:
        ValueError: a folder holds the wrong kind of model, an evaluation is missing, or one belongs to no
            model given.
    """
    reports = [(read_eval(path), Path(path)) for path in evals]
    unused = set(range(len(reports)))
    models = []
    for k, folder in enumerate([encoder, *regressors]):
        model = load_model(folder)
        is_encoder, want_encoder = isinstance(model, SiteNetEncoder), k == 0
        if is_encoder != want_encoder:
            kind = {True: "an encoder", False: "a regressor"}
            raise ValueError(f"{folder} holds {kind[is_encoder]}, expected {kind[want_encoder]}")
        training = run_record(Path(folder), encoder=is_encoder)
        mine: list[tuple[EvalReport, Path]] = []
        for target in () if isinstance(model, SiteNetEncoder) else model.config.targets:
            found = [k for k, (r, _) in enumerate(reports) if r.target == target and r.model is not None
                     and Path(r.model).resolve() == Path(folder).resolve()]
            if not found:
                raise ValueError(f"no evaluation JSON for {target} of {folder}: pass --eval with the output of "
                                 f"`sitenet evaluate {folder}`")
            unused.discard(found[0])
            path = reports[found[0]][1]
            mine.append((read_eval(path, splits=(training or {}).get("splits")), path))
        targets = () if isinstance(model, SiteNetEncoder) else model.config.targets
        models.append(ZooModel(zoo_name(targets), model, trained=True, evaluations=tuple(r for r, _ in mine),
                               eval_paths=tuple(p for _, p in mine), source=_display(folder), training=training,
                               source_folder=Path(folder)))
    if unused:
        raise ValueError(f"evaluation JSON(s) {[str(reports[k][1]) for k in sorted(unused)]} belong to no model given")
    return models


def run_record(folder: Path, *, encoder: bool) -> dict[str, Any] | None:
    """What a training run recorded beside the model: ``<folder>/training.json`` (a fine-tune, or a snapshot of
    a DIM run), else for a DIM encoder (``<run>/encoder``) the run's resolved ``config.json`` and the ``splits``
    of ``history.json``. None when the run left nothing."""
    own = folder / "training.json"  # a fine-tune's record, or a snapshot of a DIM run that carries its own
    if own.is_file() or not encoder:
        return json.loads(own.read_text(encoding="utf-8")) if own.is_file() else None
    config, history = folder.parent / "config.json", folder.parent / "history.json"
    if not config.is_file():
        return None
    record: dict[str, Any] = {"config": json.loads(config.read_text(encoding="utf-8"))}
    if history.is_file():
        record["splits"] = json.loads(history.read_text(encoding="utf-8")).get("splits")
    return record


def _display(path: Path) -> str:
    """A path as written in cards and registry: relative to the repo when inside it (no machine paths)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}


def registry_entry(item: ZooModel, folder: Path, *, org: str = ORG) -> dict[str, Any]:
    """The registry.json entry of a published zoo folder."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = _file_entry(path)
    targets = item.targets
    first = item.evaluations[0] if item.evaluations else None
    return {
        "name": item.name,
        "repo_id": f"{org}/{item.name}",
        "kind": "regressor" if targets else "encoder",
        "targets": list(targets),
        "units": {t: UNITS[t] for t in targets},
        "outputs": list(item.model.config.outputs) if targets else ["embedding", "sites"],
        "trained": item.trained,
        "metrics": {r.target: dict(r.metrics) for r in item.evaluations},
        "data": ({"dataset": first.dataset, "split": first.split, "n_train": first.n_train, "n_val": first.n_val,
                  "n_test": first.n_test} if first else None),
        "parameters": sum(p.numel() for p in item.model.parameters()),
        "files": files,
        "size": sum(f["size"] for f in files.values()),
    }


def pinned_batch(spec: FeatureSpec) -> Batch:
    """The crystals :data:`PINNED_IDS` of the committed mp2018 sample as one padded batch."""
    from sitenet.dataset import read_dataset
    from sitenet.features import featurize
    from sitenet.structure import read_structure

    dataset = read_dataset(SAMPLE_PATH, targets=[])
    rows = {i: k for k, i in enumerate(dataset.ids)}
    return collate([featurize(read_structure(dataset.cifs[rows[i]]), spec=spec) for i in PINNED_IDS], spec)


def pinned_outputs(model: Model) -> dict[str, list]:
    """PyTorch outputs of ``model`` on :func:`pinned_batch` as nested lists (the encoder: its embedding)."""
    spec = (model.config if isinstance(model, SiteNetEncoder) else model.config.encoder).features
    with torch.no_grad():
        out = model.eval()(**to_tensors(pinned_batch(spec)))
    named = {"embedding": out.embedding} if isinstance(model, SiteNetEncoder) else out
    return {k: np.round(v.numpy().astype(np.float64), 7).tolist() for k, v in named.items()}


def build_zoo(
    models: Sequence[ZooModel],
    *,
    output: Path = ZOO_DIR,
    cards_dir: Path = MODEL_CARDS_DIR,
    expected_path: Path | None = EXPECTED_PATH,
    build_command: str,
    org: str = ORG,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Publish the zoo: one folder per model, their cards, ``registry.json`` and the pinned outputs.

    Args:
        models: From :func:`random_models` or :func:`trained_models`.
        output: The zoo folder (``zoo/``).
        cards_dir: Where the cards are copied (``model_cards/``).
        expected_path: Where the pinned outputs go (``tests/data/zoo_expected.json``); None skips them.
        build_command: The command that runs this build, quoted in every card.
        org: Hub organisation of the repo ids.
        baseline: ``sitenet baseline``'s JSON (the composition baseline), shown in the cards; None: none.

    Returns:
        The registry that was written.
    """
    output, cards_dir = Path(output), Path(cards_dir)
    output.mkdir(parents=True, exist_ok=True)
    cards_dir.mkdir(parents=True, exist_ok=True)
    downstream = [(m.name, r) for m in models for r in m.evaluations]
    entries, expected = [], {}
    for item in models:
        plots = item.plots()
        card = render_card(
            item.name,
            item.model.config,
            evals=item.evaluations,
            downstream=downstream if not item.targets else None,
            trained=item.trained,
            plots={target: name for target, (name, _) in plots.items()},
            build_command=build_command,
            org=org,
            encoder_name=ENCODER_NAME if item.targets else None,
            training=item.training,
            baseline=baseline,
        )
        facts = {"name": item.name, "repo_id": f"{org}/{item.name}", "source": item.source,
                 "build_command": build_command}
        with tempfile.TemporaryDirectory() as scratch:
            extra = {name: source for name, source in plots.values()}
            extra.update({name: Path(item.source_folder) / name for name in SHIPPED_RUN_FILES
                          if item.source_folder and (Path(item.source_folder) / name).is_file()})
            if item.training is not None:
                extra["training.json"] = Path(scratch) / "training.json"
                extra["training.json"].write_text(json.dumps(item.training, indent=2, sort_keys=True) + "\n",
                                                  encoding="utf-8")
            folder = publish(item.model, output / item.name, card=card, trained=item.trained, facts=facts,
                             extra_files=extra)
        (cards_dir / f"{item.name}.md").write_text(card, encoding="utf-8")
        verify_folder(folder)
        entries.append(registry_entry(item, folder, org=org))
        expected[item.name] = {"ids": list(PINNED_IDS), "trained": item.trained,
                               "outputs": pinned_outputs(type(item.model).from_pretrained(folder))}
    registry = {"format_version": 1, "sitenet_version": sitenet_version(), "org": org,
                "build_command": build_command, "models": entries}
    (output / REGISTRY_NAME).write_text(json.dumps(registry, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if expected_path is not None:
        Path(expected_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {"source": SAMPLE_PATH.relative_to(REPO_ROOT).as_posix(), "atol": 1e-4,
                   "regenerate": "python -m training.zoo (same arguments as the zoo build)", "models": expected}
        Path(expected_path).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return registry


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.zoo", description=__doc__.splitlines()[0])
    p.add_argument("--random", action="store_true", help="seeded random-init placeholders (marked untrained)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random placeholders")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="DIM encoder folder (save_pretrained)")
    p.add_argument("--model", action="append", default=None,
                   help=f"regressor folder, repeatable (default: {' '.join(DEFAULT_REGRESSORS)})")
    p.add_argument("--eval", action="append", default=[], help="evaluation JSON (sitenet evaluate), repeatable: "
                   "one per target of each regressor")
    p.add_argument("--output", default=None, help="zoo folder (default: the repo's zoo/)")
    p.add_argument("--cards", default=None, help="model card folder (default: the repo's model_cards/)")
    p.add_argument("--expected", default=None, help="pinned outputs JSON (default: tests/data/zoo_expected.json)")
    p.add_argument("--baseline", default=str(BASELINE_PATH), help="`sitenet baseline` JSON shown in the cards "
                   "(default: benchmarks/results/magpie_baseline.json; ignored when missing)")
    return p


def _read_baseline(path: str | None) -> dict[str, Any] | None:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path and Path(path).is_file() else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.zoo``: build the zoo from trained runs, or ``--random`` placeholders."""
    args = _parser().parse_args(argv)
    if args.random:
        models = random_models(args.seed)
        command = f"python -m training.zoo --random --seed {args.seed}"
    else:
        regressors = [Path(m) for m in args.model or DEFAULT_REGRESSORS]
        models = trained_models(Path(args.encoder), regressors, [Path(e) for e in args.eval])
        parts = ["python", "-m", "training.zoo", "--encoder", _display(Path(args.encoder))]
        for folder in regressors:
            parts += ["--model", _display(folder)]
        for path in args.eval:
            parts += ["--eval", _display(Path(path))]
        command = " ".join(shlex.quote(p) for p in parts)
    registry = build_zoo(models, output=Path(args.output) if args.output else ZOO_DIR,
                         cards_dir=Path(args.cards) if args.cards else MODEL_CARDS_DIR,
                         expected_path=Path(args.expected) if args.expected else EXPECTED_PATH,
                         build_command=command, baseline=_read_baseline(None if args.random else args.baseline))
    print(json.dumps({m["name"]: {"trained": m["trained"], "size": m["size"]} for m in registry["models"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
