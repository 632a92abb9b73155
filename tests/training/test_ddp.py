"""DIM pretraining and fine-tuning under Lightning DDP: 2 CPU processes (gloo), in a subprocess so that the test
process keeps no process group. Each rank must see its own, disjoint batches."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from sitenet.dataset import REPO_ROOT, SAMPLE_PATH
from training.data import BucketBatchSampler

# Lightning's DDP launcher re-runs this script once per extra rank, with the same arguments.
SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import torch
    from lightning.pytorch.callbacks import Callback

    from training.configs import FinetuneConfig, PretrainConfig, load_recipe
    from training.finetune import finetune
    from training.pretrain import pretrain

    out, cache, encoder = Path(sys.argv[1]), sys.argv[2], sys.argv[3]


    class Rows(Callback):
        """Writes the dataset rows of this rank's training batches to rows-<stage>-<rank>.json."""

        def __init__(self, stage):
            self.stage, self.rows = stage, []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.rows.append(batch["row"].tolist())

        def on_train_end(self, trainer, module):
            path = out / f"rows-{self.stage}-{trainer.global_rank}.json"
            path.write_text(json.dumps({"world": trainer.world_size, "rows": self.rows}))


    common = ["data.path=%s" % sys.argv[4], f"data.cache_root={cache}", "data.limit=64", "data.val_fraction=0.25",
              "data.batch_size=4", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.devices=2",
              "trainer.strategy=ddp", "trainer.threads=1", "trainer.progress_bar=false",
              "trainer.precision=32-true", "trainer.checkpoint_every_n_steps=2", "trainer.compile=false",
              f"encoder={encoder}"]
    folder = pretrain(load_recipe(None, [*common, f"output={out / 'dim'}"], kind=PretrainConfig),
                      callbacks=[Rows("pretrain")])
    finetune(load_recipe(None, [*common, f"output={out / 'ft'}", f"init={folder}", "target=band_gap",
                                "n_labels=64"], kind=FinetuneConfig), callbacks=[Rows("finetune")])
''')


@pytest.mark.slow
def test_ddp_pretrain_and_finetune_on_two_cpu_processes(tmp_path, tiny_config, sample_store, sample_cache):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(sample_cache),
                           tiny_config.model_dump_json(), str(SAMPLE_PATH)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    for weights in (tmp_path / "dim" / "encoder" / "model.safetensors", tmp_path / "ft" / "model.safetensors"):
        tensors = load_file(weights)
        assert tensors and all(np.isfinite(t).all() for t in tensors.values())
    assert (tmp_path / "dim" / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "ft" / "checkpoints" / "last.ckpt").exists()
    assert len(json.loads((tmp_path / "dim" / "epochs.json").read_text())) == 2

    for stage in ("pretrain", "finetune"):
        ranks = [json.loads((tmp_path / f"rows-{stage}-{r}.json").read_text()) for r in (0, 1)]
        assert all(r["world"] == 2 for r in ranks)
        assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) > 0  # equal step counts: DDP needs them
        per_epoch = len(ranks[0]["rows"]) // 2
        for epoch in range(2):
            seen = [{x for b in r["rows"][epoch * per_epoch:(epoch + 1) * per_epoch] for x in b} for r in ranks]
            assert seen[0] and seen[1] and not seen[0] & seen[1], (stage, epoch)


def test_sampler_shards_disjoint_equal_batches_by_rank(monkeypatch):
    """The sharding itself, with a fake world of 3: equal counts, disjoint rows, together the shared list."""
    sizes = np.random.default_rng(1).integers(1, 8, size=(50, 2))
    full = list(BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=True, seed=5))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 3)
    shards = []
    for rank in range(3):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, r=rank: r)
        sampler = BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=True, seed=5)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert len({len(s) for s in shards}) == 1
    rows = [x for s in shards for b in s for x in b]
    assert len(rows) == len(set(rows))
    kept = len(full) // 3 * 3
    assert sorted(map(tuple, (b for s in shards for b in s))) == sorted(map(tuple, full[:kept]))


def test_sampler_gives_every_rank_a_batch_when_there_are_fewer_batches_than_ranks(monkeypatch):
    sizes = np.ones((6, 2), dtype=np.int64)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 4)
    counts = []
    for rank in range(4):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, r=rank: r)
        counts.append(len(list(BucketBatchSampler(sizes, batch_size=4, max_pairs=10_000, shuffle=False, seed=0))))
    assert counts == [1, 1, 1, 1]
