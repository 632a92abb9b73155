"""Data sets, the held-out split and the on-disk feature cache."""

import csv
import json
import os
import zipfile

import numpy as np
import pytest

from sitenet.cache import FeatureStore, _build_shard, build_features
from sitenet.dataset import SAMPLE_PATH, held_out_ids, held_out_split, read_dataset
from sitenet.features import FeatureSpec, featurize
from sitenet.structure import DEFAULT_MAX_SITES, read_structure


@pytest.fixture(scope="module")
def small():
    ds = read_dataset(SAMPLE_PATH)
    return ds.subset(np.arange(24))


def test_read_mp2018_sample():
    ds = read_dataset(SAMPLE_PATH)
    assert len(ds) == 400 and set(ds.targets) == {"band_gap", "formation_energy"}
    assert np.all(ds.targets["band_gap"] >= 0) and "labels_agree" in ds.extra


def test_read_user_csv_with_files_in_a_folder_and_a_zip(tmp_path, small):
    folder = tmp_path / "cifs"
    folder.mkdir()
    names = [f"{i}.cif" for i in small.ids[:3]]
    for name, cif in zip(names, small.cifs[:3]):
        (folder / name).write_text(cif)
    with zipfile.ZipFile(tmp_path / "cifs.zip", "w") as archive:
        for name, cif in zip(names, small.cifs[:3]):
            archive.writestr(name, cif)
    table = tmp_path / "mine.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "file", "my_gap", "hardness"])
        for k, name in enumerate(names):
            w.writerow([f"x{k}", name, 1.5 * k, 3])
    for root in (folder, tmp_path / "cifs.zip"):
        ds = read_dataset(table, file_column="file", cif_root=root, targets={"band_gap": "my_gap"})
        assert list(ds.ids) == ["x0", "x1", "x2"] and ds.cifs == small.cifs[:3]
        assert np.allclose(ds.targets["band_gap"], [0, 1.5, 3.0]) and "hardness" in ds.extra
    with pytest.raises(ValueError, match="missing column"):
        read_dataset(table, targets=["nope"], file_column="file", cif_root=folder)
    (folder / names[0]).unlink()
    with pytest.raises(ValueError, match="not found"):
        read_dataset(table, file_column="file", cif_root=folder, targets=[])


def test_held_out_split_keeps_clusters_together_and_is_seeded():
    ids = np.array([f"m{i}" for i in range(200)])
    agree = np.ones(200, bool)
    agree[::7] = False
    clusters = {f"m{i}": i // 4 for i in range(0, 40)}  # 10 clusters of 4
    a = held_out_split(ids, agree, clusters, fraction=0.2, seed=1)
    assert np.array_equal(a, held_out_split(ids, agree, clusters, fraction=0.2, seed=1))
    for c in range(10):
        members = a[[int(i[1:]) for i in ids if clusters.get(i) == c]]
        assert members.all() or not members.any()
    assert abs((a & agree).sum() - 0.2 * agree.sum()) <= 4


def test_committed_held_out_split_is_ten_percent():
    ids = held_out_ids()
    assert 2900 < len(ids) < 3300 and all(i.startswith("mp-") for i in ids)


def test_cache_builds_resumes_and_matches_direct_featurisation(tmp_path, small):
    spec = FeatureSpec()
    bad = "data_broken\n_cell_length_a 3\n"
    ids = list(small.ids) + ["broken"]
    cifs = small.cifs + [bad]
    store = build_features(ids, cifs, tmp_path, spec=spec, workers=2, shard_size=10, progress=False)
    assert len(store) == 24 and [r.id for r in store.rejected] == ["broken"]
    assert store.rejected[0].code == "cif_parse_error"
    report = list(csv.DictReader((store.folder / "rejected.csv").open()))
    assert report == [{"id": "broken", "code": "cif_parse_error", "message": store.rejected[0].message}]
    for k in (0, 7, 23):
        direct = featurize(read_structure(small.cifs[k]), spec=spec)
        cached = store[int(store.rows([small.ids[k]])[0])]
        assert np.array_equal(cached.atomic_numbers, direct.atomic_numbers)
        assert np.array_equal(cached.distance, direct.distance) and cached.images == direct.images
    assert isinstance(store._distance[0], np.memmap)  # memory-mapped, not loaded
    # resume: delete one shard, the rest is reused
    shards = sorted(store.folder.glob("shard-*"))
    mtimes = {s.name: s.stat().st_mtime_ns for s in shards}
    import shutil

    shutil.rmtree(shards[1])
    again = build_features(ids, cifs, tmp_path, spec=spec, workers=1, shard_size=10, progress=False)
    assert len(again) == 24
    assert shards[0].stat().st_mtime_ns == mtimes[shards[0].name] and shards[1].exists()
    # another config -> another folder; never stale features
    other = build_features(ids[:3], cifs[:3], tmp_path, spec=FeatureSpec(max_atoms=20), workers=1, progress=False)
    assert other.folder != store.folder and other.sizes[:, 1].max() <= 20
    assert json.loads((other.folder / "spec.json").read_text())["max_atoms"] == 20
    assert FeatureStore(store.folder).has(["broken", small.ids[0]]).tolist() == [False, True]


def test_two_processes_building_one_cache_agree(tmp_path, small):
    """Two runs started on a cold cache build the same shards side by side; neither fails and the store is whole
    (the second finisher finds the shard done and drops its own copy)."""
    ids, cifs = [str(i) for i in small.ids[:6]], list(small.cifs[:6])
    spec = FeatureSpec()
    folder = tmp_path / spec.key()
    folder.mkdir()
    (folder / "spec.json").write_text(spec.model_dump_json())
    stale = folder / f"shard-00000.tmp-{os.getpid() + 1}"  # a crashed builder's scratch folder
    stale.mkdir()
    _build_shard(folder / "shard-00000", ids, cifs, spec, DEFAULT_MAX_SITES)
    _build_shard(folder / "shard-00000", ids, cifs, spec, DEFAULT_MAX_SITES)  # the late twin
    assert sorted(p.name for p in folder.glob("shard-*") if p != stale) == ["shard-00000"]
    store = FeatureStore(folder)
    assert len(store) == 6
