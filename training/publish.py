"""Model folders for the zoo and the Hub: weights, config, a parity-checked ONNX graph, the card and a manifest.

``publish(model, folder)`` builds the whole folder in a hidden staging directory next to ``folder`` and only
moves it into place once the ONNX graph matches PyTorch on varied batches, ``from_pretrained`` reloads the
weights exactly and the manifest verifies; a failed publish leaves any previous folder untouched.
``sitenet export`` re-exports a saved torch model folder the same way. Pushing and pulling are
``sitenet push`` / ``sitenet pull`` (``sitenet/hub.py``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import tempfile
from collections.abc import Sequence
from importlib.metadata import version as _package_version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sitenet.batch import Batch, collate
from sitenet.config import FORMAT_VERSION, SiteNetConfig
from sitenet.errors import ModelLoadError
from sitenet.features import FEATURIZER_VERSION, CrystalFeatures
from sitenet.hub import ALLOWED_PATTERNS, model_type, verify_folder, write_manifest
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors
from training.export import export_onnx, output_names, parity

#: Files every published folder holds (``manifest.json`` covers the others).
CORE_FILES: tuple[str, ...] = ("config.json", "model.safetensors", "model.onnx", "README.md", "provenance.json")
#: Where build facts live. ``config.json`` is decoded strictly (``extra="forbid"``) by ``from_pretrained``,
#: so keys such as ``sitenet_version`` cannot go there until the core decoders accept them.
PROVENANCE_NAME = "provenance.json"
#: Files ``publish`` writes itself; ``extra_files`` may not replace them.
_RESERVED = {*CORE_FILES, "manifest.json"}

Model = SiteNetEncoder | SiteNetRegressor


def sitenet_version() -> str:
    """The installed ``sitenet-dim`` package version."""
    return _package_version("sitenet-dim")


def encoder_config(model: Model) -> SiteNetConfig:
    """The encoder config of an encoder or a regressor (it carries the ``FeatureSpec``)."""
    return model.config if isinstance(model, SiteNetEncoder) else model.config.encoder


def parity_batches(config: SiteNetConfig, *, seed: int = 0) -> list[Batch]:
    """Varied batches for the ONNX parity check: B = 1, several crystals, N = 1 crystals and heavily
    padded mixes (one crystal at the supercell cap among one-atom crystals).

    Distances are random but shaped like real features (0 at each site's own column, 1.5-8 Å elsewhere);
    parity is about the graph, and real-structure parity is covered by the tests."""
    rng = np.random.default_rng(seed)
    cap = config.features.max_atoms

    def crystal(p: int, images: int) -> CrystalFeatures:
        n = p * images
        d = rng.uniform(1.5, 8.0, size=(p, n)).astype(np.float32)  # (P, N)
        d[np.arange(p), np.arange(p) * images] = 0.0
        return CrystalFeatures(atomic_numbers=rng.integers(1, 95, size=p), distance=d, images=images)

    layouts = [
        [(1, 1)],  # one atom, no images: P = N = 1
        [(3, 4)],  # B = 1
        [(1, 1), (1, 1), (1, 1)],  # only N = 1 crystals
        [(2, 6), (4, 3), (1, 8), (5, 2), (3, 5)],  # several, mixed sizes
        [(max(1, cap // 5), 5), (1, 1), (1, 1), (1, 2), (2, 1)],  # heavily padded: one large, many tiny
        [(cap, 1)] + [(1, 1)] * 11,  # P at the cap among single atoms: > 90 % of the pair tensor is padding
    ]
    return [collate([crystal(p, k) for p, k in layout], config.features) for layout in layouts]


def _model_kind(model: Model) -> str:
    return "encoder" if isinstance(model, SiteNetEncoder) else "regressor"


def provenance(model: Model, *, trained: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build facts recorded next to ``config.json`` (``provenance.json``).

    Args:
        model: The model being published.
        trained: False for a randomly initialised placeholder.
        extra: More JSON-able facts (the source run folder, the command).
    """
    config = encoder_config(model)
    facts: dict[str, Any] = {
        "sitenet_version": sitenet_version(),
        "format_version": FORMAT_VERSION,
        "model_type": model.config.model_type,
        "kind": _model_kind(model),
        "targets": [] if isinstance(model, SiteNetEncoder) else list(model.config.targets),
        "outputs": list(output_names(model)),
        "trained": trained,
        "featurizer_version": FEATURIZER_VERSION,
        "features": config.features.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    facts.update(extra or {})
    return facts


def _check_extra_name(name: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise ValueError(f"extra file name {name!r} must be a plain relative path")
    if name in _RESERVED:
        raise ValueError(f"extra file {name!r} would replace a file publish writes itself")
    if not any(fnmatch.fnmatch(name, pattern) for pattern in ALLOWED_PATTERNS):
        raise ValueError(f"extra file {name!r} would never be published (allowed: {', '.join(ALLOWED_PATTERNS)})")


def _check_reload(model: Model, folder: Path, batch: Batch) -> None:
    """``from_pretrained`` must rebuild the same config and reproduce the outputs exactly."""
    loaded = type(model).from_pretrained(folder).eval()
    if loaded.config != model.config:
        raise ModelLoadError(f"{folder}: config.json does not reload to the published config")
    with torch.no_grad():
        a, b = model(**to_tensors(batch)), loaded(**to_tensors(batch))
    pairs = zip(a, b) if isinstance(model, SiteNetEncoder) else ((a[k], b[k]) for k in a)
    if not all(torch.equal(x, y) for x, y in pairs):
        raise ModelLoadError(f"{folder}: the reloaded weights give different outputs")


def publish(
    model: Model,
    folder: str | Path,
    *,
    card: str | None = None,
    extra_files: dict[str, Path] | None = None,
    trained: bool = True,
    facts: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model folder: config.json, model.safetensors, model.onnx, README.md, provenance.json,
    any extra files (plots), then manifest.json.

    Everything is written to a staging folder first; it replaces ``folder`` only after the ONNX parity
    check (max abs diff <= 1e-4, no NaN, over :func:`parity_batches`), a strict ``from_pretrained`` reload
    and manifest verification all pass.

    Args:
        model: An encoder or a regressor (put in eval mode).
        folder: Destination; an existing folder is replaced only if it holds nothing but model-folder files
            (a training run folder with checkpoints or logs is refused, never deleted).
        card: README.md text; None keeps huggingface_hub's generated card.
        extra_files: name in the folder -> source file, e.g. ``{"parity.png": Path(...)}``; names must match
            ``sitenet.hub.ALLOWED_PATTERNS``.
        trained: Recorded in provenance.json; False marks a random-init placeholder.
        facts: More JSON-able facts for provenance.json.

    Returns:
        The folder.

    Raises:
        ValueError: a bad extra file name, or ONNX and PyTorch disagree.
        ModelLoadError: the folder does not reload or verify, or ``folder`` exists and holds other files.
    """
    folder = Path(folder)
    if folder.exists():
        _check_replaceable(folder)
    extra = dict(extra_files or {})
    for name, source in extra.items():
        _check_extra_name(name)
        if not Path(source).is_file():
            raise FileNotFoundError(f"extra file {name!r}: {source} does not exist")
    model = model.eval()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        batches = parity_batches(encoder_config(model))
        export_onnx(model, staging / "model.onnx")
        parity(model, staging / "model.onnx", batches)
        _check_reload(model, staging, batches[3])
        if card is not None:
            (staging / "README.md").write_text(card, encoding="utf-8")
        facts_all = provenance(model, trained=trained, extra=facts)
        (staging / PROVENANCE_NAME).write_text(json.dumps(facts_all, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name, source in sorted(extra.items()):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        write_manifest(staging)
        verify_folder(staging)
        _make_readable(staging)
        _swap(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace anything but a model folder: ``publish`` swaps the whole directory."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} exists and is not a model folder (no config.json); refusing to replace it")
    known = set(_RESERVED)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            known |= set(json.loads(manifest.read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable manifest adds nothing; the folder is judged on the fixed names only
    other = sorted(
        rel for rel in (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if rel not in known and not fnmatch.fnmatch(rel, "*.png") and not rel.startswith(".cache/")
    )
    if other:
        shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
        raise ModelLoadError(f"{folder} holds files a model folder does not ({shown}); refusing to replace it: "
                             "publish to another folder (sitenet export --output)")


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only modes; a zoo folder is shipped and read by others."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _swap(staging: Path, folder: Path) -> None:
    """Move ``staging`` to ``folder``, removing a previous model folder only once the new one is ready."""
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        folder.rename(old / "x")
    staging.rename(folder)
    if old is not None:
        shutil.rmtree(old)


# --- loading a saved torch model folder -----------------------------------------------------------------
def load_model(folder: str | Path) -> Model:
    """An encoder or regressor from a ``save_pretrained`` folder (config.json + model.safetensors), by its
    ``model_type``.

    Raises:
        ModelLoadError: not such a folder, or an unknown ``model_type``.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelLoadError(
            f"{folder} is not a saved torch model folder: it needs config.json and model.safetensors "
            "(a Lightning .ckpt is not supported; save the module with save_pretrained first)"
        )
    classes = {"sitenet": SiteNetEncoder, "sitenet-regressor": SiteNetRegressor}
    return classes[model_type(folder)].from_pretrained(folder).eval()


def _read_trained(folder: Path) -> bool:
    path = folder / PROVENANCE_NAME
    if path.is_file():
        return bool(json.loads(path.read_text(encoding="utf-8")).get("trained", True))
    return True


def export_folder(source: str | Path, output: str | Path | None = None, *, evals: Sequence[str | Path] = (),
                  name: str | None = None) -> Path:
    """Re-export a saved torch model folder: ONNX (parity-checked), card, provenance and manifest.

    Args:
        source: A folder with config.json + model.safetensors.
        output: Destination; default ``source`` itself (replaced in place once everything passed).
        evals: Evaluation JSONs (``training/evaluate.py``, one per target) to render the card from; without
            them an existing README.md is kept, else huggingface_hub's generated card is written.
        name: Model name for the card; default the output folder's name.

    Returns:
        The published folder.
    """
    from training.cards import read_eval, render_card

    source = Path(source)
    output = Path(output) if output is not None else source
    model = load_model(source)
    trained = _read_trained(source)
    name = name or output.name
    extra = {p.name: p for p in sorted(source.glob("*.png"))}
    card: str | None = None
    if evals:
        reports = [read_eval(path) for path in evals]
        plots = {}
        for report, path in zip(reports, evals):
            plot = report.plot_path(Path(path))
            if plot is not None:
                plots[report.target] = f"parity-{report.target.replace('_', '-')}.png"
                extra[plots[report.target]] = plot
        command = " ".join([f"sitenet export {source}", *(f"--eval {path}" for path in evals)]
                           + ([f"--output {output}"] if output != source else []))
        card = render_card(name, model.config, evals=reports if isinstance(model, SiteNetRegressor) else [],
                           trained=trained, plots=plots, build_command=command)
    elif (source / "README.md").is_file():
        card = (source / "README.md").read_text(encoding="utf-8")
    # else: huggingface_hub's generated card
    if output.resolve() == source.resolve():
        # The sources are about to be replaced: copy the extra files out first.
        keep = Path(tempfile.mkdtemp(prefix=".export-extra.", dir=output.parent))
        try:
            extra = {k: Path(shutil.copy(v, keep / k.replace("/", "_"))) for k, v in extra.items()}
            return publish(model, output, card=card, extra_files=extra, trained=trained)
        finally:
            shutil.rmtree(keep, ignore_errors=True)
    return publish(model, output, card=card, extra_files=extra, trained=trained)


def export_command(args: argparse.Namespace) -> int:
    folder = export_folder(Path(args.model), Path(args.output) if args.output else None,
                           evals=args.eval, name=args.name)
    print(json.dumps({"folder": str(folder), "files": sorted(p.name for p in folder.iterdir() if p.is_file())}))
    return 0
