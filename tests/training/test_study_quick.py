"""`study --quick` end to end on the bundled sample (the whole pipeline, tiny settings)."""

import json
import shutil
from collections import Counter

import pytest
from pydantic import ValidationError

from training.cli import RECIPES
from training.configs import StudyConfig, load_recipe
from training.study import _previous_runs, run_study, transfer_jobs



def test_study_quick_end_to_end(tmp_path, sample_store, sample_cache):
    cfg = load_recipe(RECIPES / "study_quick.yaml", [
        f"data.cache_root={sample_cache}", f"output={tmp_path / 'label_masking'}", f"work={tmp_path / 'work'}"],
        kind=StudyConfig)
    run_study(cfg)
    result = json.loads((tmp_path / "label_masking.json").read_text())
    assert result["complete"]
    methods = {r["method"] for r in result["runs"]}
    for name in ("dim", "dim-standard", "random", "composition", "dim+composition"):
        assert f"repr/{name}/rf" in methods
    assert {"transfer/dim/finetune", "transfer/random/finetune", "transfer/other-target/finetune"} <= methods
    assert {r["target"] for r in result["runs"]} == {"band_gap", "formation_energy"}
    # the protocol: all N labels train (no validation carve), the last epoch is kept
    record = json.loads((tmp_path / "work" / "ft-band_gap-dim-50-0" / "training.json").read_text())
    assert record["splits"]["train"] == 50 and record["splits"]["val"] == 0
    assert record["best_epoch"] is None and record["config"]["trainer"]["max_epochs"] == 3
    assert (tmp_path / "label_masking.png").stat().st_size > 0
    assert "± " in (tmp_path / "label_masking.md").read_text()


def test_study_resume_adds_transfer_runs_and_keeps_the_rest(tmp_path, sample_store, sample_cache):
    """Raising the transfer seeds resumes: representation runs and their encoders are reused, only the new
    fine-tunes run; other changed settings start afresh."""
    base = [f"data.cache_root={sample_cache}", f"output={tmp_path / 'lm'}", f"work={tmp_path / 'work'}",
            "targets=[formation_energy]"]
    run_study(load_recipe(RECIPES / "study_quick.yaml", base, kind=StudyConfig))
    first = json.loads((tmp_path / "lm.json").read_text())["runs"]
    shutil.rmtree(tmp_path / "work" / "pretrain-dim-standard")

    run_study(load_recipe(RECIPES / "study_quick.yaml", [*base, "transfer_seeds=2"], kind=StudyConfig))
    second = json.loads((tmp_path / "lm.json").read_text())["runs"]
    assert not (tmp_path / "work" / "pretrain-dim-standard").exists()  # all its runs were done: not pretrained
    assert second[:len(first)] == first
    added = second[len(first):]
    assert sorted((r["seed"], r["method"]) for r in added) == [(1, "transfer/dim/finetune"),
                                                               (1, "transfer/other-target/finetune"),
                                                               (1, "transfer/random/finetune")]

    run_study(load_recipe(RECIPES / "study_quick.yaml", [*base, "transfer_seeds=1"], kind=StudyConfig))
    third = json.loads((tmp_path / "lm.json").read_text())["runs"]
    assert third == first  # fewer transfer seeds: the extra runs are dropped, nothing recomputed

    variant = [*base, "pretrain_variants={dim-lr: {lr: 1.0e-4, trainer: {max_epochs: 1}}}"]
    run_study(load_recipe(RECIPES / "study_quick.yaml", variant, kind=StudyConfig))
    fourth = json.loads((tmp_path / "lm.json").read_text())["runs"]
    assert fourth[:len(first)] == first  # a new variant only adds its own embedding runs
    assert {r["method"] for r in fourth[len(first):]} == {f"repr/dim-lr/{k}" for k in ("linear", "mlp", "rf")}
    saved = json.loads((tmp_path / "work" / "pretrain-dim-lr" / "config.json").read_text())
    assert saved["lr"] == 1.0e-4 and saved["data"]["limit"] == 64 and saved["negatives"] == "domain-aware"

    run_study(load_recipe(RECIPES / "study_quick.yaml", base, kind=StudyConfig))
    assert json.loads((tmp_path / "lm.json").read_text())["runs"] == first  # dropped variant, dropped runs

    run_study(load_recipe(RECIPES / "study_quick.yaml", [*base, "mlp_max_iter=50"], kind=StudyConfig))
    assert (tmp_path / "work" / "pretrain-dim-standard").exists()  # a changed setting starts afresh


def test_precomputed_embeddings_join_by_id_and_a_missing_crystal_is_named(tmp_path, sample_store, sample_cache):
    """``--rows`` lists every crystal the study reads; an embedding file covering them is fitted like any other
    feature set, and one lacking a crystal is refused with its id (nothing silently dropped)."""
    import numpy as np
    import pandas as pd
    import pytest

    from training.cli import main as cli
    from training.study import embedding_file

    base = [f"data.cache_root={sample_cache}", f"output={tmp_path / 'lm'}", f"work={tmp_path / 'work'}",
            "targets=[formation_energy]", "transfer=false"]
    rows = tmp_path / "rows.csv"
    assert cli(["study", str(RECIPES / "study_quick.yaml"), "--rows", str(rows), *[a for o in base for a in ("--set", o)]]) == 0
    frame = pd.read_csv(rows, dtype={"id": str})
    assert len(frame) > 50 and frame["cif"].str.contains("_cell_length_a").all()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", ids=frame["id"].to_numpy(dtype=str)[::-1], x=rng.normal(size=(len(frame), 3)))
    got = embedding_file(str(tmp_path / "e.npz"), frame["id"].to_numpy()[:4])
    with np.load(tmp_path / "e.npz") as f:
        np.testing.assert_array_equal(got, f["x"][::-1][:4])  # joined by id, not by position
    cfg = load_recipe(RECIPES / "study_quick.yaml", [*base, f"embedding_files={{noise: {tmp_path / 'e.npz'}}}"],
                      kind=StudyConfig)
    run_study(cfg)
    methods = {r["method"] for r in json.loads((tmp_path / "lm.json").read_text())["runs"]}
    assert {"repr/noise/rf", "repr/noise/mlp", "repr/noise/linear"} <= methods

    np.savez(tmp_path / "short.npz", ids=frame["id"].to_numpy(dtype=str)[1:], x=rng.normal(size=(len(frame) - 1, 3)))
    with pytest.raises(ValueError, match=f"no embedding for 1 crystal.*{frame['id'][0]}"):
        embedding_file(str(tmp_path / "short.npz"), frame["id"].to_numpy())


def test_processes_sharing_a_study_skip_each_others_claims_and_merge(tmp_path, sample_store, sample_cache):
    """Runs claimed by another live process (one per core) are left to it; its results, written into the JSON,
    are kept by this one; a dead process's claims are taken over. Complete only when every run is in."""
    import os

    base = [f"data.cache_root={sample_cache}", f"output={tmp_path / 'lm'}", f"work={tmp_path / 'work'}",
            "targets=[formation_energy]"]
    cfg = load_recipe(RECIPES / "study_quick.yaml", base, kind=StudyConfig)
    other = os.getppid()  # a live process that is not this one
    theirs = ["representations", ["formation_energy", 50, 0, "transfer/random/finetune"]]
    claims = tmp_path / "lm.claims.json"
    claims.write_text(json.dumps({json.dumps(k): other for k in theirs}))
    run_study(cfg)
    first = json.loads((tmp_path / "lm.json").read_text())
    assert sorted(r["method"] for r in first["runs"]) == ["transfer/dim/finetune", "transfer/other-target/finetune"]
    assert not first["complete"]

    # the other process finishes its run meanwhile and writes it in (as _write does, under the lock)
    record = {**first["runs"][0], "method": "transfer/random/finetune", "mae": 1.0}
    (tmp_path / "lm.json").write_text(json.dumps({**first, "runs": [*first["runs"], record]}))
    claims.write_text(json.dumps({json.dumps(theirs[0]): 2**22 + 12345}))  # representations: a dead process's claim
    run_study(cfg)
    merged = json.loads((tmp_path / "lm.json").read_text())
    keys = [(r["seed"], r["method"]) for r in merged["runs"]]
    assert merged["complete"] and len(keys) == len(set(keys))
    assert record in merged["runs"]  # the other process's run is kept, not redone
    assert {"repr/dim/rf", "repr/composition/rf", "transfer/dim/finetune"} <= {m for _, m in keys}


def test_an_init_with_its_own_budgets_runs_and_keeps_only_those(tmp_path):
    """``transfer_from_budgets`` scopes one init (an ablation fine-tuned at small N only); adding it to a
    finished study keeps every run it still plans and drops the init's runs at other budgets."""
    cfg = StudyConfig(budgets=(50, 100), seeds_small=2, transfer_from={"extra": "some/folder"},
                      transfer_from_budgets={"extra": (50,)}, output=str(tmp_path / "lm"))
    jobs = transfer_jobs(cfg, "dim/folder")
    assert Counter(job[3] for job in jobs) == {"dim": 8, "random": 8, "extra": 4}  # 2 targets x 2 seeds x budgets
    assert {job[0] for job in jobs if job[3] == "extra"} == {50}
    assert [job[:2] for job in jobs] == sorted(job[:2] for job in jobs)  # budget, then seed: balanced if stopped

    config = cfg.model_dump(mode="json")
    del config["transfer_from_budgets"]  # written before the setting existed
    run = {"target": "band_gap", "seed": 0, "mae": 1.0}
    runs = [{**run, "n_labels": n, "method": m} for n, m in [(50, "transfer/extra/finetune"),
                                                             (100, "transfer/extra/finetune"),
                                                             (100, "transfer/dim/finetune"), (100, "repr/dim/rf")]]
    (tmp_path / "lm.json").write_text(json.dumps({"config": config, "runs": runs}))
    kept = _previous_runs(cfg, tmp_path / "lm")
    assert [(r["n_labels"], r["method"]) for r in kept] == [(50, "transfer/extra/finetune"),
                                                            (100, "transfer/dim/finetune"), (100, "repr/dim/rf")]
    with pytest.raises(ValidationError, match=r"not in transfer_from: \['typo'\]"):
        StudyConfig(transfer_from={"extra": "some/folder"}, transfer_from_budgets={"typo": (50,)})
