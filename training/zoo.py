"""The bundled model zoo: the DIM encoder and its two fine-tuned regressors, assembled into ``zoo/``.

``build_zoo`` publishes each model folder (``training/publish.py``), writes its generated card to both
``zoo/<name>/README.md`` and ``model_cards/<name>.md``, lists everything in ``zoo/registry.json`` and pins
each model's outputs on three real crystals in ``tests/data/zoo_expected.json`` (the zoo regression test).

    python -m training.zoo --random          # seeded, untrained placeholders (clearly marked)
    python -m training.zoo --eval-band-gap EVAL.json --eval-formation-energy EVAL.json   # the trained runs
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
REGISTRY_NAME = "registry.json"
ENCODER_NAME = "sitenet-dim-mp2018"
#: Zoo folder (= Hub repo) name of each model; None is the encoder.
NAMES: dict[str | None, str] = {
    None: ENCODER_NAME,
    "band_gap": "sitenet-dim-mp2018-band-gap",
    "formation_energy": "sitenet-dim-mp2018-formation-energy",
}
#: The trained runs ``python -m training.zoo`` assembles by default.
DEFAULT_RUNS: dict[str | None, str] = {
    None: "runs/dim-mp2018/encoder",
    "band_gap": "runs/finetune-band-gap",
    "formation_energy": "runs/finetune-formation-energy",
}
#: Three real crystals of data/mp2018-sample for the pinned-output test: 1, 2 and 16 sites.
PINNED_IDS: tuple[str, ...] = ("mp-1", "mp-1009127", "mp-11582")


@dataclass(frozen=True)
class ZooModel:
    """One model to publish: where it comes from and how it was evaluated."""

    name: str
    model: Model
    trained: bool
    evaluation: EvalReport | None = None
    eval_path: Path | None = None
    source: str | None = None
    training: dict[str, Any] | None = None  # shipped as training.json: resolved run config and split counts

    @property
    def target(self) -> str | None:
        return None if isinstance(self.model, SiteNetEncoder) else self.model.config.target


def random_models(seed: int = 0) -> list[ZooModel]:
    """Seeded random-init placeholders: the DIM encoder (method.md C.2/C.4) and one regressor per target
    built on it with ``from_encoder``."""
    torch.manual_seed(seed)
    encoder = SiteNetEncoder(dim_config()).eval()
    models = [ZooModel(NAMES[None], encoder, trained=False)]
    for target in ("band_gap", "formation_energy"):
        torch.manual_seed(seed + 1 + len(models))
        head = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, target=target))
        models.append(ZooModel(NAMES[target], head.eval(), trained=False))
    return models


def trained_models(folders: dict[str | None, Path], evals: dict[str, Path]) -> list[ZooModel]:
    """The trained runs: an encoder folder and one regressor folder per target (``save_pretrained``
    folders), with each regressor's evaluation JSON.

    Raises:
        ValueError: a folder holds the wrong kind of model or target, or an evaluation JSON is missing.
    """
    models = []
    for target, folder in folders.items():
        model = load_model(folder)
        got = None if isinstance(model, SiteNetEncoder) else model.config.target
        if got != target:
            raise ValueError(f"{folder} holds a {got or 'encoder'} model, expected {target or 'encoder'}")
        training = run_record(Path(folder), encoder=target is None)
        report, path = None, None
        if target is not None:
            if target not in evals:
                raise ValueError(f"no evaluation JSON for {target}: pass --eval-{target.replace('_', '-')}")
            path = Path(evals[target])
            report = read_eval(path, splits=(training or {}).get("splits"))
            if report.target != target:
                raise ValueError(f"{path} evaluates {report.target}, expected {target}")
        models.append(ZooModel(NAMES[target], model, trained=True, evaluation=report, eval_path=path,
                               source=_display(folder), training=training))
    return models


def run_record(folder: Path, *, encoder: bool) -> dict[str, Any] | None:
    """What a training run recorded beside the model: a fine-tune's ``<folder>/training.json``, or for a
    DIM encoder (``<run>/encoder``) the run's resolved ``config.json`` and the ``splits`` of ``history.json``.
    None when the run left nothing."""
    if not encoder:
        path = folder / "training.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
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
    target = item.target
    return {
        "name": item.name,
        "repo_id": f"{org}/{item.name}",
        "kind": "encoder" if target is None else "regressor",
        "target": target,
        "units": None if target is None else UNITS[target],
        "outputs": list(item.model.config.outputs) if target else ["embedding", "sites"],
        "trained": item.trained,
        "metrics": dict(item.evaluation.metrics) if item.evaluation else {},
        "data": ({"dataset": item.evaluation.dataset, "split": item.evaluation.split, "n_train": item.evaluation.n_train,
                  "n_val": item.evaluation.n_val, "n_test": item.evaluation.n_test} if item.evaluation else None),
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
) -> dict[str, Any]:
    """Publish the zoo: one folder per model, their cards, ``registry.json`` and the pinned outputs.

    Args:
        models: From :func:`random_models` or :func:`trained_models`.
        output: The zoo folder (``zoo/``).
        cards_dir: Where the cards are copied (``model_cards/``).
        expected_path: Where the pinned outputs go (``tests/data/zoo_expected.json``); None skips them.
        build_command: The command that runs this build, quoted in every card.
        org: Hub organisation of the repo ids.

    Returns:
        The registry that was written.
    """
    output, cards_dir = Path(output), Path(cards_dir)
    output.mkdir(parents=True, exist_ok=True)
    cards_dir.mkdir(parents=True, exist_ok=True)
    downstream = {m.name: m.evaluation for m in models if m.evaluation is not None}
    entries, expected = [], {}
    for item in models:
        plot = item.evaluation.plot_path(item.eval_path) if item.evaluation and item.eval_path else None
        card = render_card(
            item.name,
            item.model.config,
            evals=[item.evaluation] if item.evaluation else [],
            downstream=downstream if item.target is None else None,
            trained=item.trained,
            plot="parity.png" if plot is not None else None,
            build_command=build_command,
            org=org,
            encoder_name=NAMES[None] if item.target is not None else None,
            training=item.training,
        )
        facts = {"name": item.name, "repo_id": f"{org}/{item.name}", "source": item.source,
                 "build_command": build_command}
        with tempfile.TemporaryDirectory() as scratch:
            extra = {"parity.png": plot} if plot is not None else {}
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
    p.add_argument("--encoder", default=DEFAULT_RUNS[None], help="DIM encoder folder (save_pretrained)")
    p.add_argument("--band-gap", default=DEFAULT_RUNS["band_gap"], help="band-gap regressor folder")
    p.add_argument("--formation-energy", default=DEFAULT_RUNS["formation_energy"], help="formation-energy regressor folder")
    p.add_argument("--eval-band-gap", default=None, help="evaluation JSON of the band-gap regressor")
    p.add_argument("--eval-formation-energy", default=None, help="evaluation JSON of the formation-energy regressor")
    p.add_argument("--output", default=None, help="zoo folder (default: the repo's zoo/)")
    p.add_argument("--cards", default=None, help="model card folder (default: the repo's model_cards/)")
    p.add_argument("--expected", default=None, help="pinned outputs JSON (default: tests/data/zoo_expected.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.zoo``: build the zoo from trained runs, or ``--random`` placeholders."""
    args = _parser().parse_args(argv)
    if args.random:
        models = random_models(args.seed)
        command = f"python -m training.zoo --random --seed {args.seed}"
    else:
        folders = {None: Path(args.encoder), "band_gap": Path(args.band_gap),
                   "formation_energy": Path(args.formation_energy)}
        evals = {k: Path(v) for k, v in (("band_gap", args.eval_band_gap),
                                         ("formation_energy", args.eval_formation_energy)) if v}
        models = trained_models(folders, evals)
        parts = ["python", "-m", "training.zoo", "--encoder", _display(folders[None]), "--band-gap",
                 _display(folders["band_gap"]), "--formation-energy", _display(folders["formation_energy"])]
        for key, path in evals.items():
            parts += [f"--eval-{key.replace('_', '-')}", _display(path)]
        command = " ".join(shlex.quote(p) for p in parts)
    registry = build_zoo(models, output=Path(args.output) if args.output else ZOO_DIR,
                         cards_dir=Path(args.cards) if args.cards else MODEL_CARDS_DIR,
                         expected_path=Path(args.expected) if args.expected else EXPECTED_PATH,
                         build_command=command)
    print(json.dumps({m["name"]: {"trained": m["trained"], "size": m["size"]} for m in registry["models"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
