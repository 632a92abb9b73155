"""Supercells, features and batches on real MP structures."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from sitenet.batch import bucket_batches, collate
from sitenet.elements import MAX_Z, PROPERTIES, raw_table, scaled_table, site_features
from sitenet.features import FeatureSpec, featurize, pair_features
from sitenet.supercell import build_supercell, min_image_distances, supercell_matrix

SPEC = FeatureSpec()


def _variants(s: Structure) -> dict[str, Structure]:
    """The same crystal given five other ways."""
    sup = s.copy()
    sup.make_supercell([2, 2, 2])
    rot = s.copy()
    rot.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0, translation_vec=[0.3, -1.2, 2.0]))
    perm = Structure.from_sites([s[i] for i in np.random.default_rng(1).permutation(len(s))])
    return {
        "conventional": SpacegroupAnalyzer(s).get_conventional_standard_structure(),
        "primitive": SpacegroupAnalyzer(s).get_primitive_standard_structure(),
        "supercell_2x2x2": sup,
        "rotated": rot,
        "permuted": perm,
    }


def _fingerprint(f) -> np.ndarray:
    """Order-free summary of the features: each site's sorted distances, sorted by species then distances."""
    rows = [np.concatenate([[z], np.sort(d)]) for z, d in zip(f.atomic_numbers, f.distance)]
    return np.array(sorted(rows, key=lambda r: tuple(np.round(r, 4))))


def test_element_table_covers_z_1_to_94_without_nan():
    table = raw_table()
    assert table.shape == (MAX_Z + 1, len(PROPERTIES))
    assert np.all(np.isfinite(table))
    assert np.all(table[1:, 0] == np.arange(1, MAX_Z + 1))
    scaled = scaled_table()
    assert np.allclose(scaled[1:].mean(0), 0, atol=1e-5) and np.allclose(scaled[1:].std(0), 1, atol=1e-4)
    assert np.all(scaled[0] == 0)  # padding row


def test_rock_salt_supercell_matches_the_method_reference():
    nacl = Structure(Lattice.cubic(5.64), ["Na", "Cl"] * 4,
                     [[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0.5], [0, 0.5, 0.5], [0.5, 0.5, 0.5]])
    cell = build_supercell(nacl.lattice.matrix, nacl.frac_coords, nacl.atomic_numbers, max_atoms=50)
    assert cell.n_primitive == 2 and sorted(cell.multipliers) == [2, 3, 3]  # method.md A.2: 36 atoms
    assert cell.n_sites == 36 and cell.images == 18
    assert np.all(cell.parent == np.repeat([0, 1], 18))
    assert np.isclose(abs(np.linalg.det(cell.lattice)), 18 * nacl.volume / 4)


@pytest.mark.parametrize("cap", [1, 8, 50, 100])
def test_supercell_respects_the_cap_and_orders_images(sample_structures, cap):
    for s in sample_structures[:12]:
        cell = build_supercell(s.lattice.matrix, s.frac_coords, s.atomic_numbers, max_atoms=cap)
        assert cell.n_sites == cell.n_primitive * cell.images
        assert cell.n_sites <= max(cap, cell.n_primitive)
        # site p * images + t is image t of primitive site p: same species, and every image sees the same
        # environment (its sorted distances to all supercell sites equal those of image 0)
        assert np.all(cell.atomic_numbers[cell.parent] == np.repeat(cell.atomic_numbers, cell.images))
        d = min_image_distances(cell.frac_coords, cell.frac_coords, cell.lattice)  # (N, N)
        for p in range(cell.n_primitive):
            rows = np.sort(d[p * cell.images : (p + 1) * cell.images], axis=1)
            assert np.allclose(rows, rows[0], atol=1e-5)
            assert d[p * cell.images, p * cell.images] == 0


def test_supercell_matrix_is_integer_with_the_growth_determinant():
    lattice = np.array([[3.0, 0, 0], [1.4, 4.1, 0], [0.7, 0.9, 5.3]])
    m, mult = supercell_matrix(lattice, 2, 50)
    assert m.dtype.kind == "i" and round(abs(np.linalg.det(m))) == np.prod(mult)
    assert 2 * np.prod(mult) <= 50


def test_min_image_distances_match_pymatgen(sample_structures):
    for s in sample_structures[:10]:
        ours = min_image_distances(s.frac_coords, s.frac_coords, s.lattice.matrix)
        assert np.allclose(ours, s.distance_matrix, atol=1e-6)


def test_features_are_invariant_to_how_the_crystal_is_given(sample_structures):
    for s in sample_structures[:10]:
        ref = featurize(s, spec=SPEC)
        for name, variant in _variants(s).items():
            f = featurize(variant, spec=SPEC)
            assert f.distance.shape == ref.distance.shape, (s.composition.reduced_formula, name)
            assert np.allclose(_fingerprint(f), _fingerprint(ref), atol=1e-4), (s.composition.reduced_formula, name)


def test_one_atom_and_two_hundred_atom_structures(sample_structures):
    one = next(s for s in sample_structures if len(s) == 1)
    f = featurize(one, spec=SPEC)
    assert f.n_primitive == 1 and 1 < f.n_sites <= 50 and f.distance[0, 0] == 0
    big = next(s for s in sample_structures if len(s) == 200)
    f = featurize(big, spec=SPEC)
    assert f.n_primitive <= 200 and f.images == 1 and f.n_sites == f.n_primitive
    assert np.all(np.isfinite(f.distance)) and np.all(np.isfinite(f.site))


def test_pair_features_raw_distance_then_gaussians():
    d = np.array([[0.0, 2.0, 7.5]], dtype=np.float32)
    g = pair_features(d, SPEC)
    assert g.shape == (1, 3, SPEC.pair_dim)
    assert np.allclose(g[..., 0], d) and np.isclose(g[0, 0, 1], 1.0) and np.all((g[..., 1:] >= 0) & (g[..., 1:] <= 1))
    assert pair_features(d, FeatureSpec(rbf_count=0)).shape == (1, 3, 1)


def test_feature_spec_key_changes_with_settings_and_rejects_unknown_keys():
    assert FeatureSpec().key() == FeatureSpec().key()
    assert FeatureSpec(max_atoms=100).key() != FeatureSpec().key()
    with pytest.raises(ValueError):
        FeatureSpec(unknown=1)
    with pytest.raises(ValueError):
        FeatureSpec(version=99)


def test_collate_pads_with_zeros_and_masks(sample_structures):
    feats = [featurize(s, spec=SPEC) for s in sample_structures[:6]]
    batch = collate(feats, SPEC)
    b, p, n, g = batch.pair.shape
    assert (b, g) == (6, SPEC.pair_dim) and batch.site.shape == (6, p, SPEC.site_dim)
    for k, f in enumerate(feats):
        assert batch.site_mask[k].sum() == f.n_primitive and batch.atom_mask[k].sum() == f.n_sites
        assert np.allclose(batch.pair[k, : f.n_primitive, : f.n_sites, 0], f.distance)
        assert np.all(batch.pair[k, f.n_primitive :] == 0) and np.all(batch.pair[k, :, f.n_sites :] == 0)
        assert np.all(batch.site[k, f.n_primitive :] == 0) and np.all(batch.species[k, f.n_primitive :] == 0)
        assert np.allclose(batch.site[k, : f.n_primitive], site_features(f.atomic_numbers))
    with pytest.raises(ValueError):
        collate([], SPEC)


def test_bucketing_covers_everything_once_and_cuts_padding(sample_structures):
    feats = [featurize(s, spec=SPEC) for s in sample_structures]
    sizes = [(f.n_primitive, f.n_sites) for f in feats]
    buckets = bucket_batches(sizes, batch_size=8)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(feats)))
    shuffled = bucket_batches(sizes, batch_size=8, shuffle=True, seed=3)
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(len(feats)))
    assert [b.tolist() for b in shuffled] == [b.tolist() for b in bucket_batches(sizes, batch_size=8, shuffle=True, seed=3)]
    bucketed = np.mean([collate([feats[i] for i in b], SPEC).padding_fraction for b in buckets])
    naive = np.mean([collate(feats[i : i + 8], SPEC).padding_fraction for i in range(0, len(feats), 8)])
    assert bucketed < naive
    budget = bucket_batches(sizes, batch_size=64, max_pairs=20_000)
    for b in budget:
        if len(b) > 1:
            assert len(b) * max(sizes[i][0] for i in b) * max(sizes[i][1] for i in b) <= 20_000
