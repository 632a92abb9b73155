"""Exact mid-epoch resume: a run killed between two checkpoints and restarted with the same command ends with
the same weights as an uninterrupted run and feeds the same batches in the same order."""

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.numpy import load_file

from sitenet.dataset import SAMPLE_PATH
from training.configs import FinetuneConfig, PretrainConfig, load_recipe
from training.data import BucketBatchSampler
from training.finetune import finetune
from training.pretrain import pretrain

EVERY = 3  # checkpoint_every_n_steps
KILL_AT = 7  # global step at which the run is "killed" (mid-epoch 1: epochs have 5 batches)
TOLERANCE = 0.0  # measured: the resumed weights are bit-identical


class Killed(RuntimeError):
    pass


class Kill(Callback):
    """Raises before the training step that follows global step ``at`` (as if the process were killed)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise Killed(f"killed at step {self.at}")


class Rows(Callback):
    """Records the dataset rows of every training batch, with the global step it trains."""

    def __init__(self):
        self.seen: list[tuple[int, list[int]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((trainer.global_step, batch["row"].tolist()))


def _common(tmp_path, name, sample_cache, tiny_config):
    sets = [f"data.path={SAMPLE_PATH}", f"data.cache_root={sample_cache}", "data.batch_size=8",
            f"output={tmp_path / name}", "trainer.max_epochs=2", "trainer.limit_val_batches=1",
            "trainer.progress_bar=false", "trainer.threads=1", "trainer.precision=32-true",
            f"trainer.checkpoint_every_n_steps={EVERY}", "trainer.compile=false",
            f"encoder={tiny_config.model_dump_json()}"]
    return sets


def _killed_then_resumed(run, cfg, tmp_path, name):
    """(rows fed in order, global step of the checkpoint the run resumed from)."""
    killed, resumed = Rows(), Rows()
    with pytest.raises(Killed):
        run(cfg, callbacks=[Kill(KILL_AT), killed])
    ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    step = ckpt["global_step"]
    assert "rng_states" in ckpt
    run(cfg, callbacks=[resumed])
    assert resumed.seen[0][0] == step  # training restarted right after the checkpointed step
    return [r for s, r in killed.seen if s < step] + [r for _, r in resumed.seen], step, ckpt


def _assert_same_weights(a, b):
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=TOLERANCE, err_msg=k)


def test_pretrain_resumes_mid_epoch_exactly(tmp_path, tiny_config, sample_store, sample_cache):
    def config(name):
        return load_recipe(None, [*_common(tmp_path, name, sample_cache, tiny_config), "data.limit=40"],
                           kind=PretrainConfig)

    straight = Rows()
    pretrain(config("a"), callbacks=[straight])
    rows, step, ckpt = _killed_then_resumed(pretrain, config("b"), tmp_path, "b")
    per_epoch = len(straight.seen) // 2
    assert step % per_epoch != 0 and step > per_epoch  # a mid-epoch checkpoint of the second epoch
    assert straight.seen[0][1] != straight.seen[per_epoch][1]  # each epoch has its own order (set_epoch arrives)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": step - per_epoch}]
    assert rows == [r for _, r in straight.seen]
    _assert_same_weights(tmp_path / "a" / "encoder" / "model.safetensors",
                         tmp_path / "b" / "encoder" / "model.safetensors")
    for name in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / name / "checkpoints").iterdir()) == ["best-epoch=1.ckpt", "last.ckpt"]
        epochs = json.loads((tmp_path / name / "history.json").read_text())["epochs"]
        assert [e["epoch"] for e in epochs] == [0, 1]
        assert [e["epoch"] for e in json.loads((tmp_path / name / "epochs.json").read_text())] == [0, 1]
    a, b = (json.loads((tmp_path / n / "epochs.json").read_text()) for n in ("a", "b"))
    for ea, eb in zip(a, b):  # the interrupted epoch's train averages cover all its batches (EpochMetricsCarry)
        timing = "train/epoch_seconds"
        assert {k: v for k, v in ea.items() if k != timing} == {k: v for k, v in eb.items() if k != timing}


def test_finetune_resumes_mid_epoch_exactly(tmp_path, tiny_config, sample_store, sample_cache):
    def config(name):
        return load_recipe(None, [*_common(tmp_path, name, sample_cache, tiny_config), "n_labels=40",
                                  "target=band_gap", "init=random", "patience=5", "schedule=cosine"],
                           kind=FinetuneConfig)

    straight = Rows()
    finetune(config("a"), callbacks=[straight])
    rows, step, ckpt = _killed_then_resumed(finetune, config("b"), tmp_path, "b")
    per_epoch = len(straight.seen) // 2
    assert step % per_epoch != 0 and step > per_epoch
    best = next(v for k, v in ckpt["callbacks"].items() if k.startswith("BestWeights"))
    assert best["epoch"] == 0 and best["state"] is not None  # the best weights travel in the checkpoint
    assert rows == [r for _, r in straight.seen]
    _assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["last.ckpt"]
    a, b = (json.loads((tmp_path / n / "training.json").read_text()) for n in ("a", "b"))
    assert (a["best_epoch"], a["epochs_run"]) == (b["best_epoch"], b["epochs_run"])
    assert a["best_val_mae"] == b["best_val_mae"]

    again = Rows()  # rerunning a finished run trains no more and saves the same model
    finetune(config("b"), callbacks=[again])
    assert again.seen == []
    _assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")


def test_early_stopping_stays_stopped_after_resume():
    from types import SimpleNamespace

    from training.checkpoints import ResumableEarlyStopping

    done = ResumableEarlyStopping("val/mae", patience=2)
    done.wait_count, done.stopped_epoch = 2, 4
    done.stopping_reason = type(done.stopping_reason).PATIENCE_EXHAUSTED
    for state, stops in ((done.state_dict(), True), (ResumableEarlyStopping("val/mae", patience=2).state_dict(), False)):
        stop = ResumableEarlyStopping("val/mae", patience=2)
        stop.load_state_dict(state)
        trainer = SimpleNamespace(should_stop=False)
        stop.on_train_start(trainer, None)
        assert trainer.should_stop is stops


def test_finetune_without_checkpointing_writes_none(tmp_path, tiny_config, sample_store, sample_cache):
    """The study's fine-tunes (loggers=False) stay file-free apart from the model."""
    cfg = load_recipe(None, [*_common(tmp_path, "s", sample_cache, tiny_config), "n_labels=20",
                             "trainer.max_epochs=1", "trainer.limit_train_batches=1"], kind=FinetuneConfig)
    finetune(cfg, loggers=False)
    assert not (tmp_path / "s" / "checkpoints").exists()
    assert (tmp_path / "s" / "model.safetensors").exists()


def test_sampler_skips_only_within_the_saved_epoch():
    sizes = np.random.default_rng(0).integers(1, 6, size=(30, 2))
    sampler = BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=True, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    first = [next(it), next(it)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "batches": 2} and first == full[:2]

    fresh = BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=True, seed=3)
    fresh.load_state_dict(state)
    it = iter(fresh)  # lazy: set_epoch after iter(), as Lightning does
    fresh.set_epoch(2)
    assert list(it) == full[2:]
    assert len(fresh) == len(full)
    assert list(fresh) == full  # the skip applies once

    other = BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=True, seed=3)
    other.load_state_dict({"epoch": 1, "batches": len(full)})  # saved at the end of epoch 1
    other.set_epoch(2)
    assert list(other) == full


def test_lightning_reaches_the_samplers_epoch(sample_store, sample_cache):
    """Lightning calls set_epoch on ``loader.sampler`` / ``loader.batch_sampler.sampler`` only: it must reach the
    BucketBatchSampler, or every epoch replays epoch 0's order."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    from training.configs import DataConfig
    from training.data import load_corpus, loader

    cfg = DataConfig(path=str(SAMPLE_PATH), cache_root=str(sample_cache), batch_size=8)
    dl = loader(load_corpus(cfg), np.arange(40), cfg, shuffle=True)
    _set_sampler_epoch(dl, 3)
    assert dl.batch_sampler.epoch == 3
    assert dl.state_dict() == {"epoch": 0, "batches": 0}
