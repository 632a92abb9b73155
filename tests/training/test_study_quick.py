"""`study --quick` end to end on the bundled sample (the whole pipeline, tiny settings)."""

import json

from training.cli import RECIPES
from training.configs import StudyConfig, load_recipe
from training.study import run_study



def test_study_quick_end_to_end(tmp_path, sample_store, sample_cache):
    cfg = load_recipe(RECIPES / "study_quick.yaml", [
        f"data.cache_root={sample_cache}", f"output={tmp_path / 'label_masking'}", f"work={tmp_path / 'work'}"],
        kind=StudyConfig)
    run_study(cfg)
    result = json.loads((tmp_path / "label_masking.json").read_text())
    assert result["complete"]
    methods = {r["method"] for r in result["runs"]}
    for name in ("dim", "dim-standard", "random", "composition"):
        assert f"repr/{name}/rf" in methods
    assert {"transfer/dim/finetune", "transfer/random/finetune"} <= methods
    assert {r["target"] for r in result["runs"]} == {"band_gap", "formation_energy"}
    assert (tmp_path / "label_masking.png").stat().st_size > 0
    assert "± " in (tmp_path / "label_masking.md").read_text()
