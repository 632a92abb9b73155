"""Model cards, generated from evaluation JSONs (never typed by hand).

``render_card`` builds the Hugging Face front matter with ``ModelCardData`` (one ``model-index`` entry per
target, each with its own ``task_name`` and ``dataset_config``, so the Hub never merges them) and a body
covering data and licence, sizes, test metrics, the parity plot, intended use, limitations, fine-tuning,
loading from the Hub and the command behind every number. The output depends only on its arguments, so
``model_cards/<name>.md`` and ``zoo/<name>/README.md`` are byte-identical.

Evaluation JSON: what ``sitenet evaluate MODEL --output STEM`` (``training/evaluate.py``) writes to ``STEM.json``,
read by :func:`read_eval`; unknown keys are ignored::

    {"model": "runs/finetune-band-gap", "target": "band_gap", "unit": "eV", "split": "held-out (labels_agree)",
     "metrics": {"mae": 0.41, "mae_nonmetal": 0.62, "metal_accuracy": 0.9, "count": 5000, ...}}

Optional keys: ``command`` (the exact command; default ``sitenet evaluate MODEL --output STEM``), ``plot``
(default ``STEM.png`` when it exists), ``n_train`` / ``n_val`` / ``n_test`` (default: the ``splits`` of the
fine-tune run's ``training.json``; ``n_test`` falls back to ``metrics.count``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sitenet.config import UNITS, RegressorConfig, SiteNetConfig, Target

#: Hub organisation of the zoo; a zoo folder ``<name>`` is published as ``<ORG>/<name>``.
ORG = "sitenet-dim"
DATASET_ID = "materialsproject/mp2018"
DATASET_NAME = "Materials Project 2018 (MT-CGCNN / CrysXPP / MEGNet curation)"
TAGS = ("materials-science", "crystal", "site-net", "deep-infomax", "onnx", "materials-project")
LABELS: dict[str, str] = {"band_gap": "Band gap", "formation_energy": "Formation energy"}
#: Metrics each target's evaluation must report: key -> (label, unit or None for a fraction).
REQUIRED_METRICS: dict[str, dict[str, tuple[str, bool]]] = {
    "band_gap": {"mae": ("MAE, all test crystals", True), "mae_nonmetal": ("MAE, non-metals only", True),
                 "metal_accuracy": ("metal / non-metal accuracy", False)},
    "formation_energy": {"mae": ("MAE, all test crystals", True)},
}
#: What any other (a user's own) property's evaluation reports.
OTHER_METRICS: dict[str, tuple[str, bool]] = {"mae": ("MAE, all test crystals", True)}


def label(target: str) -> str:
    """A property's name for people: "Band gap", or a user's ``heat_of_formation`` as "Heat of formation"."""
    return LABELS.get(target, target.replace("_", " ").capitalize())


def required_metrics(target: str) -> dict[str, tuple[str, bool]]:
    return REQUIRED_METRICS.get(target, OTHER_METRICS)


class EvalReport(BaseModel):
    """One model's evaluation on one target (the JSON of ``training/evaluate.py``, see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    target: Target
    unit: str = Field("", description="the target's unit (older reports of the zoo's targets: filled in)")
    model: str | None = Field(None, description="the model folder that was evaluated")
    split: str = "test"
    dataset: str = "mp2018"
    metrics: dict[str, float]
    n_train: int | None = Field(None, ge=0, description="labelled crystals used for training")
    n_val: int | None = Field(None, ge=0, description="crystals used for validation / early stopping")
    n_test: int | None = Field(None, ge=1, description="held-out crystals the metrics are computed on")
    plot: str | None = Field(None, description="parity plot PNG, relative to the JSON file")
    command: str = Field(min_length=1, description="the exact command that produced these numbers")

    @model_validator(mode="before")
    @classmethod
    def _test_count(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("unit") and data.get("target") in UNITS:
            data = {**data, "unit": UNITS[data["target"]]}
        if isinstance(data, dict) and data.get("n_test") is None and isinstance(data.get("metrics"), dict):
            count = data["metrics"].get("count")
            if count is not None:
                data = {**data, "n_test": int(count)}
        return data

    @model_validator(mode="after")
    def _check(self) -> "EvalReport":
        missing = sorted(set(required_metrics(self.target)) - set(self.metrics))
        if missing:
            raise ValueError(f"evaluation of {self.target} lacks metric(s) {missing}")
        return self

    def plot_path(self, json_path: Path) -> Path | None:
        """The parity plot file, resolved next to the JSON; None if there is none."""
        if self.plot is None:
            return None
        path = Path(json_path).parent / self.plot
        if not path.is_file():
            raise FileNotFoundError(f"{json_path}: parity plot {self.plot!r} not found at {path}")
        return path

    def sizes(self) -> str:
        """``train / val / test`` crystal counts, ``n/a`` where unknown."""
        return " / ".join("n/a" if n is None else str(n) for n in (self.n_train, self.n_val, self.n_test))


def read_eval(path: str | Path, *, splits: Mapping[str, int] | None = None) -> EvalReport:
    """Parse an evaluation JSON (see the module docstring).

    Args:
        path: ``STEM.json`` written by ``sitenet evaluate``.
        splits: ``{"train": .., "val": .., "test": ..}`` crystal counts of the run (its ``training.json``);
            default: read from ``<model>/training.json`` when that folder exists.
    """
    path = Path(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: an evaluation JSON must hold an object")
    if splits is None and raw.get("model") and (Path(raw["model"]) / "training.json").is_file():
        splits = json.loads((Path(raw["model"]) / "training.json").read_text(encoding="utf-8")).get("splits")
    if raw.get("n_test") is None and isinstance(raw.get("metrics"), dict) and raw["metrics"].get("count") is not None:
        raw["n_test"] = int(raw["metrics"]["count"])  # the rows actually scored, not the size of the test split
    for key in ("train", "val", "test"):
        if splits and raw.get(f"n_{key}") is None and splits.get(key) is not None:
            raw[f"n_{key}"] = int(splits[key])
    if raw.get("plot") is None and path.with_suffix(".png").is_file():
        raw["plot"] = path.with_suffix(".png").name
    if raw.get("command") is None and raw.get("model"):
        raw["command"] = f"sitenet evaluate {raw['model']} --output {_shown(path.with_suffix(''))}"
    return EvalReport.model_validate(raw)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when inside it: no machine paths in cards."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _fmt(value: float, unit: str | None) -> str:
    return f"{value:.4f} {unit}" if unit else f"{100 * value:.2f} %"


def _eval_results(report: EvalReport) -> list:
    from huggingface_hub import EvalResult

    name, unit = label(report.target), report.unit
    results = []
    for key, (what, has_unit) in required_metrics(report.target).items():
        results.append(EvalResult(
            task_type="tabular-regression",
            task_name=f"{name} regression",  # distinct per target: the Hub merges equal task/dataset pairs
            dataset_type=DATASET_ID,
            dataset_name=f"MP 2018 {report.target}",
            dataset_config=report.target,
            dataset_split=report.split,
            metric_type="accuracy" if key == "metal_accuracy" else "mae",
            metric_value=round(float(report.metrics[key]), 6),
            metric_name=f"{what} ({unit})" if has_unit else what,
        ))
    return results


def _front_matter(name: str, config: SiteNetConfig | RegressorConfig, evals: Sequence[EvalReport],
                  base_model: str | None, trained: bool) -> str:
    from huggingface_hub import ModelCardData

    is_encoder = isinstance(config, SiteNetConfig)
    data = ModelCardData(
        model_name=name,
        license="mit",
        library_name="sitenet",
        tags=list(TAGS) + ([] if trained else ["untrained"]),
        datasets=[DATASET_ID],
        metrics=["mae", "accuracy"] if any(r.target == "band_gap" for r in evals) else ["mae"],
        pipeline_tag="feature-extraction" if is_encoder else "tabular-regression",
        base_model=base_model,
        eval_results=[r for report in evals for r in _eval_results(report)] or None,
    )
    return data.to_yaml()


def _metrics_table(reports: Sequence[tuple[str, EvalReport]]) -> list[str]:
    lines = ["| model | target | metric | value | train / val / test crystals |", "|---|---|---|---|---|"]
    for model, report in reports:
        unit = report.unit
        for key, (what, has_unit) in required_metrics(report.target).items():
            lines.append(f"| {model} | {report.target} | {what} | {_fmt(report.metrics[key], unit if has_unit else None)} "
                         f"| {report.sizes()} |")
    return lines


def _baseline_lines(reports: Sequence[tuple[str, EvalReport]], baseline: Mapping[str, object] | None) -> list[str]:
    """The bar to clear: a Magpie composition random forest on the same training labels and test crystals."""
    results = baseline.get("results", {}) if baseline else {}
    rows = [(model, r, results[r.target]) for model, r in reports if isinstance(results, Mapping) and r.target in results]
    if not rows:
        return []
    out = ["Beside the bar to clear, a random forest on Magpie composition features (matminer) trained on the same "
           "labels and scored on the same crystals:", "",
           "| model | target | MAE | Magpie + RF MAE | change |", "|---|---|---|---|---|"]
    for model, report, base in rows:
        ours, theirs, unit = report.metrics["mae"], float(base["mae"]), report.unit
        out.append(f"| {model} | {report.target} | {ours:.4f} {unit} | {theirs:.4f} {unit} | "
                   f"{100 * (ours - theirs) / theirs:+.0f} % |")
    return out + ["", f"Baseline command: `{baseline['command']}` (`benchmarks/results/magpie_baseline.md`).", ""]


def render_card(
    name: str,
    config: SiteNetConfig | RegressorConfig,
    *,
    evals: Sequence[EvalReport] = (),
    downstream: Sequence[tuple[str, EvalReport]] | None = None,
    trained: bool = True,
    plots: Mapping[str, str] | None = None,
    build_command: str,
    org: str = ORG,
    encoder_name: str | None = None,
    training: Mapping[str, object] | None = None,
    baseline: Mapping[str, object] | None = None,
) -> str:
    """The model card (README.md) of a zoo model.

    Args:
        name: Zoo folder name, also the Hub repo name ``<org>/<name>``.
        config: The model's config (an encoder's ``SiteNetConfig`` or a regressor's ``RegressorConfig``).
        evals: This model's own evaluations (one per target; regressors only); they fill ``model-index``.
        downstream: Encoder cards: (model name, evaluation) of the models fine-tuned from it.
        trained: False for a random-init placeholder: the card says so at the top, and has no metrics.
        plots: target -> file name of its parity plot inside the model folder, linked from the card.
        build_command: The command that assembled this folder.
        org: Hub organisation.
        encoder_name: Zoo name of the encoder a regressor was fine-tuned from (its ``base_model``).
        training: The folder's ``training.json`` (resolved training config and ``splits`` crystal counts),
            when it ships one.
        baseline: The composition baseline on the same labels and test crystals (``sitenet baseline``'s JSON:
            ``command`` and ``results`` by target), shown beside this model's metrics.

    Returns:
        The card text (YAML front matter + Markdown), deterministic in its arguments.
    """
    is_encoder = isinstance(config, SiteNetConfig)
    if is_encoder and evals:
        raise ValueError("an encoder has no targets of its own; pass its fine-tuned models' results as downstream")
    if not is_encoder and any(r.target not in config.targets for r in evals):
        raise ValueError(f"evaluations for {sorted({r.target for r in evals})} given to a {list(config.targets)} model")
    if trained and not is_encoder and not evals:
        raise ValueError(f"{name}: a trained regressor's card needs its evaluation JSON")
    enc = config if is_encoder else config.encoder
    spec = enc.features
    repo = f"{org}/{name}"
    base = f"{org}/{encoder_name}" if encoder_name and not is_encoder else None
    cls = "SiteNetEncoder" if is_encoder else "SiteNetRegressor"
    out: list[str] = ["---", _front_matter(name, config, evals, base, trained).rstrip("\n"), "---", "", f"# {name}", ""]

    if not trained:
        out += ["> **UNTRAINED PLACEHOLDER.** These weights are a seeded random initialisation, published so that",
                "> the serving stack and the tooling can be built and tested. Its outputs carry no physical meaning",
                "> and it has no evaluation. `provenance.json` records `\"trained\": false`. The text below",
                "> describes the trained release that will replace it.", ""]

    if is_encoder:
        out += [f"A Site-Net crystal encoder pretrained with Deep InfoMax (self-supervised, no labels) on the "
                f"Materials Project 2018 crystals. It maps a crystal to a {enc.embedding_dim}-d embedding "
                f"(`embedding`, shape (B, {enc.embedding_dim})) and per-site local vectors (`sites`, shape "
                f"(B, P, {enc.local_dim})). Fine-tune it on a few hundred labelled crystals of your own.", ""]
    else:
        whats = [f"band gap in eV (exactly 0 where the predicted metal probability is >= 0.5) and the metal "
                 f"probability" if config.gated(t) else f"{label(t).lower()} in {config.units[t]}" for t in config.targets]
        what = " and the ".join(whats)
        several = (" One encoder pass gives every target (a multi-task model: one encoder, one head, trained on "
                   "the summed losses, weighted as `loss_weights` in `training.json` says).")\
            if len(config.targets) > 1 else ""
        init = (training or {}).get("config", {}).get("init")
        start = f" Training started from `{init}` (`init` in `training.json`)." if init else ""
        out += [f"A Site-Net regressor predicting the {what} of a crystal from its CIF, fine-tuned from the Deep "
                f"InfoMax pretrained encoder" + (f" [`{base}`](https://huggingface.co/{base})" if base else "") +
                f". Outputs: {', '.join(f'`{o}`' for o in config.outputs)}.{several}{start}", ""]

    out += ["## Files", "",
            "| file | content |", "|---|---|",
            "| `config.json` | model config, including the featuriser spec (`features`) used in training |",
            "| `model.safetensors` | PyTorch weights (`from_pretrained`) |",
            "| `model.onnx` | the same model as one ONNX graph (opset 18, dynamic batch and site axes), "
            "checked against PyTorch (max abs diff <= 1e-4) before publishing |",
            "| `provenance.json` | sitenet version, trained flag, featuriser version and spec |",
            *(["| `training.json` | the resolved training config and the train / val / test crystal counts |"]
              if training is not None else []),
            "| `manifest.json` | sha256 of every other file; `sitenet.hub` verifies it on every load |", ""]

    out += ["## Training data and licence", "",
            "Crystals and labels come from the Materials Project (legacy ~2018 database, PBE/GGA(+U) labels) as "
            "curated for MT-CGCNN (Sanyal et al., arXiv:1811.05660), CrysXPP (Das et al., npj Comput. Mater. (2023)) "
            "and MEGNet (Chen et al., Chem. Mater. 31, 3564 (2019)). The data are licensed **CC BY 4.0**; cite "
            "A. Jain et al., *APL Materials* 1, 011002 (2013) when you use them. The code and these weights are "
            "MIT-licensed. The held-out test crystals are the committed split `data/splits/mp2018-test.txt`; "
            "near-duplicate clusters never straddle it.", ""]
    splits = training.get("splits") if training is not None else None
    if isinstance(splits, Mapping):
        counts = ", ".join(f"{splits[k]} {k}" for k in ("train", "val", "test") if k in splits)
        how = ("Deep InfoMax pretraining used no labels" if is_encoder
               else "Fine-tuning used the labelled crystals whose curated labels agree")
        out += [f"Crystals per split of this run: {counts}. {how}; the test crystals were never trained on.", ""]

    out += ["## Evaluation", ""]
    reports = [(name, r) for r in evals] if evals else list(downstream or ())
    if not trained:
        out += ["None: this is an untrained placeholder.", ""]
    elif not reports:
        out += ["Deep InfoMax pretraining uses no labels, so the encoder has no metric of its own; see the models "
                "fine-tuned from it.", ""]
    else:
        if is_encoder:
            out += ["The encoder has no labels of its own. Models fine-tuned from it, on the held-out test crystals:", ""]
        out += _metrics_table(reports) + [""]
        out += _baseline_lines(reports, baseline)
        for target, plot in (plots or {}).items():
            out += [f"![Parity plot: predicted against DFT {label(target).lower()}]({plot})", ""]
        out += ["Each number above was produced by:", ""]
        for model, report in reports:
            out += [f"- {model} ({report.target}, {report.split} split of {report.dataset}):", "",
                    "  ```bash", f"  {report.command}", "  ```", ""]
    out += ["This folder was assembled by:", "", "```bash", build_command, "```", ""]

    out += ["## Intended use", "",
            "Screening-level predictions and embeddings for ordered inorganic crystals similar to those in the "
            "Materials Project, and a starting point for fine-tuning on small labelled data sets. Not a "
            "replacement for DFT on a candidate you intend to make; the labels themselves carry GGA errors "
            "(band gaps are systematically underestimated).", ""]

    out += ["## Limitations", "",
            "- Ordered structures only: partial occupancies, vacancies on sites and dummy species are rejected.",
            "- Supported elements: Z = 1 to 94 (H to Pu).",
            f"- Each crystal is reduced to its primitive cell and expanded to a supercell of at most "
            f"{spec.max_atoms} atoms (`features.max_atoms`); longer-range order beyond that supercell is not seen.",
            "- Inputs with more than 500 sites are rejected (`too_many_sites`).",
            "- Labels are the legacy ~2018 Materials Project values; newer MP releases (r2SCAN, corrected "
            "energies) differ, so compare like with like.",
            "- Featurisation must match training exactly: `sitenet` rebuilds it from `config.json`'s `features`, "
            f"featuriser version {spec.version}.", ""]

    finetune_from = name if is_encoder else (encoder_name or "sitenet-dim-mp2018")
    out += ["## Fine-tune the encoder on your own data", "",
            "```python",
            "from sitenet.config import RegressorConfig",
            "from sitenet.model import SiteNetEncoder, SiteNetRegressor",
            "",
            f'encoder = SiteNetEncoder.from_pretrained("{finetune_from}")  # zoo name, folder or "{org}/{finetune_from}"',
            'config = RegressorConfig(encoder=encoder.config, targets=["formation_energy"])',
            "model = SiteNetRegressor.from_encoder(encoder, config)  # encoder weights copied strictly, new head",
            "```", "",
            "or from the command line, with a CSV of `material_id` (or `id`), `cif` and label columns "
            "(`formation_energy_per_atom` in eV/atom, `band_gap` in eV):", "",
            "```bash",
            "sitenet finetune training/recipes/finetune_formation_energy.yaml \\",
            f"    --set init={finetune_from} --set data.path=my_crystals.csv --set output=runs/my-finetune",
            "```", ""]

    out += ["## Load from the Hugging Face Hub", "",
            "```bash",
            f"sitenet pull {repo}           # download once and verify every sha256",
            "export HF_HUB_OFFLINE=1       # afterwards everything loads from the local cache",
            "```", "",
            "```python",
            "import onnxruntime as ort",
            "from sitenet.hub import resolve",
            f"from sitenet.model import {cls}",
            "",
            f'folder = resolve("{name}")  # bundled zoo name, local folder, or the Hub id "{repo}"; checks manifest.json',
            f"model = {cls}.from_pretrained(folder)  # PyTorch",
            'session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])',
            "```", ""]
    if not is_encoder:
        out += ["Or predict straight from CIF files: `sitenet predict my.cif`.", ""]

    out += ["## Citation", "",
            "Site-Net: Moran et al., *Digital Discovery* (2023). Deep InfoMax: Hjelm et al., ICLR (2019). "
            "Materials Project: Jain et al., *APL Materials* 1, 011002 (2013).", ""]
    return "\n".join(out)
