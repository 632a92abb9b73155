"""The pretraining comparison (benchmarks/pretrain_compare.py): reads `sitenet pretrain` histories, marks the
epoch pretraining keeps, tolerates metrics a run did not log, and fails clearly on a folder that is no run."""

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "pretrain_compare", Path(__file__).resolve().parents[2] / "benchmarks" / "pretrain_compare.py")
pretrain_compare = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pretrain_compare)


def _run(folder: Path, dims: list[float], probe_from: int) -> Path:
    epochs = [{"epoch": k, "val/dim": d, "val/collapsed_dims": float(k == 2),
               **({"val/probe_formation_energy_mae": 0.3 + 0.01 * k} if k >= probe_from else {})}
              for k, d in enumerate(dims)]
    folder.mkdir()
    (folder / "history.json").write_text(json.dumps({"best_checkpoint": None, "splits": {}, "epochs": epochs}))
    return folder


def test_table_marks_the_kept_epoch_and_leaves_unlogged_metrics_blank(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [2.0, 1.5, 1.7, 1.6], probe_from=2)  # kept: epoch 1, logged no probe yet
    b = _run(tmp_path / "b", [1.0, 0.9, 0.8, 0.85], probe_from=0)  # kept: epoch 2
    out = tmp_path / "cmp"
    pretrain_compare.main([f"one={a}", f"two={b}", "--epochs", "0,3", "--output", str(out)])
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| one")
            or line.startswith("| two")]
    assert [r.split(" | ")[1] for r in rows] == ["0", "1 (kept)", "3", "0", "2 (kept)", "3"]
    assert rows[1].split(" | ")[3] == "–"  # run one logged no probe at epoch 1
    assert rows[4].split(" | ")[3] == "0.320" and rows[4].split(" | ")[-1] == "1 |"  # probe, collapsed dims
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_folder_without_history_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="history.json: no such file"):
        pretrain_compare.main([f"x={tmp_path}", "--output", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit):  # argparse: a run without a name
        pretrain_compare.main([str(tmp_path)])
