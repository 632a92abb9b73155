"""The bundled zoo (manifests, cards, registry, pinned outputs), the generated cards, and ``build_zoo`` from
trained run folders. When the zoo is rebuilt, ``python -m training.zoo`` also rewrites
tests/data/zoo_expected.json, so the pinned-output test follows the shipped models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sitenet import hub
from sitenet.config import RegressorConfig, SiteNetConfig
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors
from training import zoo
from training.cards import EvalReport, _eval_results, read_eval, render_card

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO = hub.ZOO_DIR
CARDS = REPO_ROOT / "model_cards"
EXPECTED = json.loads((REPO_ROOT / "tests" / "data" / "zoo_expected.json").read_text())
REGISTRY = json.loads((ZOO / "registry.json").read_text())
NAMES = [zoo.zoo_name(), *(zoo.zoo_name(targets) for targets in zoo.LAYOUT)]
UNITS = {"band_gap": "eV", "formation_energy": "eV/atom"}

BAND_GAP_EVAL = {"target": "band_gap", "split": "test", "dataset": "mp2018", "n_train": 300, "n_val": 20, "n_test": 80,
                 "metrics": {"mae": 0.5123, "mae_nonmetal": 0.7345, "metal_accuracy": 0.8421, "rmse": 0.9},
                 "command": "python -m training.evaluate runs/finetune-band-gap --split test"}
EFORM_EVAL = {"target": "formation_energy", "n_train": 300, "n_val": 20, "n_test": 80, "metrics": {"mae": 0.1678},
              "command": "python -m training.evaluate runs/finetune-formation-energy --split test"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the bundled zoo -------------------------------------------------------------------------------------
def test_zoo_holds_the_encoder_and_its_regressors_and_the_registry_lists_them() -> None:
    assert sorted(p.name for p in ZOO.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(NAMES)
    assert [m["name"] for m in REGISTRY["models"]] == NAMES
    kinds = {m["name"]: (m["kind"], tuple(m["targets"]), m["units"]) for m in REGISTRY["models"]}
    assert kinds[zoo.ENCODER_NAME] == ("encoder", (), {})
    for targets in zoo.LAYOUT:
        assert kinds[zoo.zoo_name(targets)] == ("regressor", targets, {t: UNITS[t] for t in targets})


@pytest.mark.parametrize("name", NAMES)
def test_bundled_folder_verifies_and_matches_registry_and_card(name: str) -> None:
    folder = ZOO / name
    manifest = hub.verify_folder(hub.resolve(name))
    entry = next(m for m in REGISTRY["models"] if m["name"] == name)
    on_disk = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert set(entry["files"]) == set(on_disk) == set(manifest["files"]) | {"manifest.json"}
    for rel, path in on_disk.items():
        assert entry["files"][rel] == {"sha256": sha256(path), "size": path.stat().st_size}, rel
    assert entry["size"] == sum(p.stat().st_size for p in on_disk.values()) < 6_000_000  # index: ~4 MB
    if entry["kind"] == "regressor" and entry["trained"]:
        assert {"neighbours.safetensors", "neighbours.json", "uncertainty.json"} <= set(on_disk)
    assert (folder / "README.md").read_bytes() == (CARDS / f"{name}.md").read_bytes()
    facts = json.loads((folder / "provenance.json").read_text())
    assert facts["trained"] is entry["trained"] is EXPECTED["models"][name]["trained"]
    assert facts["name"] == name and entry["repo_id"].endswith("/" + name)
    card = (folder / "README.md").read_text()
    assert ("UNTRAINED PLACEHOLDER" in card) is (not entry["trained"])
    if entry["trained"] and entry["kind"] == "regressor":
        assert set(entry["metrics"]) == set(entry["targets"])
        for metrics in entry["metrics"].values():
            assert metrics["mae"] > 0 and f"{metrics['mae']:.4f}" in card


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_pinned_outputs_on_three_real_cifs(name: str) -> None:
    expected = EXPECTED["models"][name]
    assert tuple(expected["ids"]) == zoo.PINNED_IDS
    folder = hub.resolve(name)
    config = json.loads((folder / "config.json").read_text())
    cls = SiteNetRegressor if config["model_type"] == "sitenet-regressor" else SiteNetEncoder
    model = cls.from_pretrained(folder).eval()
    spec = model.config.features if cls is SiteNetEncoder else model.config.encoder.features
    batch = zoo.pinned_batch(spec)
    with torch.no_grad():
        out = model(**to_tensors(batch))
    torch_out = {"embedding": out.embedding} if cls is SiteNetEncoder else out
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: batch.inputs()[i.name] for i in session.get_inputs()}
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
    assert set(expected["outputs"]) == set(torch_out)
    for key, want in expected["outputs"].items():
        np.testing.assert_allclose(torch_out[key].numpy(), np.array(want), atol=1e-4, rtol=0, err_msg=f"torch {key}")
        np.testing.assert_allclose(onnx_out[key], np.array(want), atol=1e-4, rtol=0, err_msg=f"onnx {key}")


@pytest.mark.parametrize("name", NAMES)
def test_bundled_onnx_matches_pytorch_on_real_crystals(name: str, sample_structures: list[Any]) -> None:
    """The shipped graph computes what the shipped weights do, on 40 real crystals in padded size batches."""
    from sitenet.batch import collate
    from sitenet.features import featurize
    from sitenet.predict import size_batches
    from training.export import PARITY_ATOL, parity
    from training.publish import encoder_config, load_model

    folder = hub.resolve(name)
    model = load_model(folder)
    spec = encoder_config(model).features
    feats = [featurize(s, spec=spec) for s in sample_structures]
    batches = [collate([feats[i] for i in idx], spec)
               for idx in size_batches([(f.n_primitive, f.n_sites) for f in feats], batch_size=8)]
    assert len(batches) > 3 and max(len(b) for b in batches) > 1
    assert parity(model, folder / "model.onnx", batches) <= PARITY_ATOL


# --- cards -----------------------------------------------------------------------------------------------
def _card(target: str, report: dict[str, Any], **kwargs: Any) -> str:
    return render_card(f"sitenet-dim-mp2018-{target}", RegressorConfig(target=target),
                       evals=[EvalReport.model_validate(report)], build_command="python -m training.zoo", **kwargs)


def read_eval_dict(report: dict[str, Any]) -> EvalReport:
    return EvalReport.model_validate(report)


def test_card_front_matter_has_one_model_index_entry_per_target() -> None:
    from huggingface_hub import ModelCard, ModelCardData

    gap = ModelCard(_card("band_gap", BAND_GAP_EVAL, plots={"band_gap": "parity.png"}, encoder_name="sitenet-dim-mp2018"))
    eform = ModelCard(_card("formation_energy", EFORM_EVAL))
    assert gap.data.license == "mit" and gap.data.pipeline_tag == "tabular-regression"
    assert gap.data.library_name == "sitenet" and gap.data.datasets and "accuracy" in gap.data.metrics
    assert gap.data.base_model == "sitenet-dim/sitenet-dim-mp2018"
    values = {(r.metric_type, r.metric_value) for r in gap.data.eval_results}
    assert values == {("mae", 0.5123), ("mae", 0.7345), ("accuracy", 0.8421)}
    tasks = {(r.task_name, r.dataset_config) for card in (gap, eform) for r in card.data.eval_results}
    assert tasks == {("Band gap regression", "band_gap"), ("Formation energy regression", "formation_energy")}
    # Both targets in one model-index survive a YAML round trip as two results (the Hub merge pitfall).
    both = [*_eval_results(read_eval_dict(BAND_GAP_EVAL)), *_eval_results(read_eval_dict(EFORM_EVAL))]
    reloaded = ModelCard("---\n" + ModelCardData(model_name="x", eval_results=both).to_yaml() + "\n---\n").data
    assert {r.dataset_config for r in reloaded.eval_results} == {"band_gap", "formation_energy"}
    assert len(reloaded.eval_results) == 4


def test_card_body_says_data_licence_sizes_metrics_limits_and_commands() -> None:
    card = _card("band_gap", BAND_GAP_EVAL, plots={"band_gap": "parity.png"})
    for needle in ["CC BY 4.0", "Jain et al.", "MT-CGCNN", "CrysXPP", "MEGNet", "| 300 / 20 / 80 |",
                   "0.5123 eV", "0.7345 eV", "84.21 %", "![Parity plot", "](parity.png)", "Ordered structures only",
                   "Z = 1 to 94", "at most 50 atoms", "more than 500 sites", "~2018", "from_encoder",
                   "sitenet finetune", "sitenet pull sitenet-dim/sitenet-dim-mp2018-band_gap",
                   BAND_GAP_EVAL["command"], "python -m training.zoo"]:
        assert needle in card, needle
    assert "UNTRAINED" not in card
    assert card == _card("band_gap", BAND_GAP_EVAL, plots={"band_gap": "parity.png"}), "deterministic"


def test_card_refuses_missing_or_mismatched_evaluations() -> None:
    with pytest.raises(ValueError, match="evaluation JSON"):
        render_card("x", RegressorConfig(target="band_gap"), build_command="c")
    with pytest.raises(ValueError, match="formation_energy"):
        _card("band_gap", EFORM_EVAL)
    with pytest.raises(ValueError, match="mae_nonmetal"):
        EvalReport.model_validate({**BAND_GAP_EVAL, "metrics": {"mae": 0.5, "metal_accuracy": 0.8}})
    with pytest.raises(ValueError, match="downstream"):
        render_card("enc", SiteNetConfig(), evals=[read_eval_dict(EFORM_EVAL)], build_command="c")
    untrained = render_card("enc", SiteNetConfig(), trained=False, build_command="c")
    assert "UNTRAINED PLACEHOLDER" in untrained and "- untrained" in untrained


# --- build_zoo from trained runs -------------------------------------------------------------------------
def test_read_eval_takes_the_evaluate_output_as_written(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "finetune-band-gap"
    run.mkdir(parents=True)
    (run / "training.json").write_text(json.dumps({"splits": {"train": 300, "val": 20, "test": 81}}))
    stem = tmp_path / "runs" / "finetune-band-gap-eval"
    stem.with_suffix(".png").write_bytes(b"\x89PNG")
    written = {"model": str(run), "target": "band_gap", "unit": "eV", "split": "held-out (labels_agree)",
               "metrics": {"mae": 0.5, "rmse": 0.8, "r2": float("nan"), "count": 80, "mae_nonmetal": 0.7,
                           "metal_accuracy": 0.84, "metal_fraction": 0.4}}
    stem.with_suffix(".json").write_text(json.dumps(written))
    report = read_eval(stem.with_suffix(".json"))
    assert (report.n_train, report.n_val, report.n_test) == (300, 20, 80)  # n_test: the scored rows
    assert report.plot_path(stem.with_suffix(".json")) == stem.with_suffix(".png")
    assert report.command.startswith(f"sitenet evaluate {run} --output ") and report.command.endswith("-eval")
    assert read_eval(stem.with_suffix(".json"), splits={"train": 5, "val": 1}).n_train == 5


def _runs(tmp_path: Path, layout: tuple[tuple[str, ...], ...]) -> tuple[Path, list[str], list[str]]:
    """A fake DIM run and one fine-tuned run per entry of ``layout`` with an evaluation per target:
    (runs folder, --model arguments, --eval arguments)."""
    torch.manual_seed(3)
    runs = tmp_path / "runs"
    encoder = SiteNetEncoder(SiteNetConfig())
    encoder.save_pretrained(runs / "dim" / "encoder")
    (runs / "dim" / "config.json").write_text(json.dumps({"encoder": {}, "negatives": "domain-aware"}))
    (runs / "dim" / "history.json").write_text(json.dumps({"splits": {"train": 900, "val": 50, "test": 80},
                                                           "best_checkpoint": "/abs/x.ckpt", "epochs": []}))
    models, evals = [], []
    for targets in layout:
        run = runs / "-".join(targets)
        model = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config, targets=targets))
        model.save_pretrained(run)
        (run / "training.json").write_text(json.dumps({"config": {"targets": list(targets)},
                                                       "splits": {"train": 300, "val": 20, "test": 80}}))
        models += ["--model", str(run)]
        for target in targets:
            report = {"band_gap": BAND_GAP_EVAL, "formation_energy": EFORM_EVAL}[target]
            stem = runs / f"{run.name}-eval-{target}"
            stem.with_suffix(".png").write_bytes(b"\x89PNG " + target.encode())
            written = {"model": str(run), "target": target, "unit": UNITS[target], "split": "held-out (labels_agree)",
                       "metrics": {**report["metrics"], "count": 80}}
            stem.with_suffix(".json").write_text(json.dumps(written))
            evals += ["--eval", str(stem.with_suffix(".json"))]
    return runs, models, evals


def test_build_zoo_from_trained_runs(tmp_path: Path) -> None:
    runs, models, evals = _runs(tmp_path, (("band_gap",), ("formation_energy",)))
    args = ["--encoder", str(runs / "dim" / "encoder"), *models, "--output", str(tmp_path / "zoo"),
            "--cards", str(tmp_path / "cards"), "--expected", str(tmp_path / "expected.json")]

    with pytest.raises(ValueError, match="no evaluation JSON for band_gap"):
        zoo.main(args + evals[2:])
    with pytest.raises(ValueError, match="expected a regressor"):
        zoo.main(args + ["--model", str(runs / "dim" / "encoder")] + evals)
    with pytest.raises(ValueError, match="belong to no model"):
        zoo.main(args[:2] + models[:2] + ["--output", str(tmp_path / "zoo")] + evals)

    assert zoo.main(args + evals) == 0
    names = [zoo.ENCODER_NAME, "sitenet-dim-mp2018-band-gap", "sitenet-dim-mp2018-formation-energy"]
    registry = json.loads((tmp_path / "zoo" / "registry.json").read_text())
    assert [m["name"] for m in registry["models"]] == names
    assert [m["trained"] for m in registry["models"]] == [True, True, True]
    by_name = {m["name"]: m for m in registry["models"]}
    gap_metrics = by_name["sitenet-dim-mp2018-band-gap"]["metrics"]["band_gap"]
    assert gap_metrics["mae_nonmetal"] == BAND_GAP_EVAL["metrics"]["mae_nonmetal"]
    assert by_name["sitenet-dim-mp2018-formation-energy"]["data"]["n_test"] == 80
    for name in names:
        folder = tmp_path / "zoo" / name
        hub.verify_folder(folder)
        assert (folder / "README.md").read_bytes() == (tmp_path / "cards" / f"{name}.md").read_bytes()
        card = (folder / "README.md").read_text()
        assert "UNTRAINED" not in card and "training.json" in card and "training.json" in by_name[name]["files"]
    gap = tmp_path / "zoo" / "sitenet-dim-mp2018-band-gap"
    card = (gap / "README.md").read_text()
    assert (gap / "parity-band-gap.png").read_bytes() == b"\x89PNG band_gap" and "](parity-band-gap.png)" in card
    assert "| 300 / 20 / 80 |" in card and f"sitenet evaluate {runs / 'band_gap'} --output" in card
    encoder_card = (tmp_path / "cards" / "sitenet-dim-mp2018.md").read_text()
    assert "0.1678 eV/atom" in encoder_card and "0.5123 eV" in encoder_card and "model-index" not in encoder_card
    assert "900 train, 50 val, 80 test" in encoder_card
    shipped = json.loads((tmp_path / "zoo" / "sitenet-dim-mp2018" / "training.json").read_text())
    assert shipped == {"config": {"encoder": {}, "negatives": "domain-aware"}, "splits": {"train": 900, "val": 50, "test": 80}}
    expected = json.loads((tmp_path / "expected.json").read_text())
    assert set(expected["models"]) == set(names) and expected["models"][names[1]]["trained"] is True
    assert len(expected["models"][names[1]]["outputs"]["band_gap"]) == len(zoo.PINNED_IDS)


def test_build_zoo_with_one_multitask_regressor(tmp_path: Path) -> None:
    runs, models, evals = _runs(tmp_path, (("band_gap", "formation_energy"),))
    (Path(models[1]) / "uncertainty.json").write_text('{"fits": {}}')  # what `sitenet uncertainty` leaves
    baseline = tmp_path / "magpie.json"
    baseline.write_text(json.dumps({"command": "sitenet baseline", "results": {"formation_energy": {"mae": 0.2}}}))
    assert zoo.main(["--encoder", str(runs / "dim" / "encoder"), *models, *evals, "--output", str(tmp_path / "zoo"),
                     "--cards", str(tmp_path / "cards"), "--expected", str(tmp_path / "expected.json"),
                     "--baseline", str(baseline)]) == 0
    name = "sitenet-dim-mp2018-band-gap-formation-energy"
    entry = {m["name"]: m for m in json.loads((tmp_path / "zoo" / "registry.json").read_text())["models"]}[name]
    assert entry["targets"] == ["band_gap", "formation_energy"]
    assert entry["outputs"] == ["band_gap", "metal_probability", "formation_energy", "embedding"]
    assert entry["units"] == {"band_gap": "eV", "formation_energy": "eV/atom"}
    assert "uncertainty.json" in entry["files"] and "neighbours.json" not in entry["files"]
    card = (tmp_path / "zoo" / name / "README.md").read_text()
    assert "0.5123 eV" in card and "0.1678 eV/atom" in card and "multi-task" in card
    assert "](parity-band-gap.png)" in card and "](parity-formation-energy.png)" in card
    assert "| 0.1678 eV/atom | 0.2000 eV/atom | -16 % |" in card and "`sitenet baseline`" in card
    from huggingface_hub import ModelCard

    assert {r.dataset_config for r in ModelCard(card).data.eval_results} == {"band_gap", "formation_energy"}
    encoder_card = (tmp_path / "cards" / "sitenet-dim-mp2018.md").read_text()
    assert encoder_card.count(f"| {name} |") == 5  # gap: mae, non-metal mae, accuracy; eform: mae; its baseline row


@pytest.mark.parametrize("name", NAMES)
def test_card_python_snippets_run_offline(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Python block of a bundled card runs as written, with the Hub unreachable."""
    import re

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = (ZOO / name / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert blocks, f"{name}'s card has no Python example"
    for code in blocks:
        exec(compile(code, f"{name}/README.md", "exec"), {})  # noqa: S102 - our own card, the point of the test
