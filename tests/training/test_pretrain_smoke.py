"""Pretraining end to end on a slice of the bundled sample: writes a loadable encoder, a history with
embedding variances, and resumes from its last checkpoint."""

import json

from sitenet.dataset import SAMPLE_PATH
from sitenet.model import SiteNetEncoder
from training.configs import PretrainConfig, load_recipe
from training.pretrain import pretrain



def _config(tmp_path, epochs, tiny_config, sample_cache):
    return load_recipe(None, [
        f"data.path={SAMPLE_PATH}", f"data.cache_root={sample_cache}", "data.limit=40", "data.batch_size=8",
        f"output={tmp_path / 'dim'}", f"trainer.max_epochs={epochs}", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1", "trainer.progress_bar=false",
        f"encoder={tiny_config.model_dump_json()}"], kind=PretrainConfig)


def test_pretrain_smoke_and_resume(tmp_path, tiny_config, sample_store, sample_cache):
    folder = pretrain(_config(tmp_path, 1, tiny_config, sample_cache))
    encoder = SiteNetEncoder.from_pretrained(str(folder))
    assert encoder.config == tiny_config
    history = json.loads((tmp_path / "dim" / "history.json").read_text())
    assert len(history["epochs"]) == 1
    epoch = history["epochs"][0]
    assert len(epoch["embedding_variance"]) == tiny_config.embedding_dim
    assert "val/dim" in epoch and "train/dim_local" in epoch
    assert 0 < epoch["val/probe_formation_energy_mae"] < 5  # the frozen-embedding probe, eV/atom
    assert (tmp_path / "dim" / "checkpoints" / "last.ckpt").exists()
    pretrain(_config(tmp_path, 2, tiny_config, sample_cache))  # resumes at epoch 1 from last.ckpt
    history = json.loads((tmp_path / "dim" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [0, 1]  # the resumed run keeps epoch 0's record
    assert (tmp_path / "dim" / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the loss curves
