"""The Site-Net encoder and heads: shapes, masking, padding, N=1, invariance, save/load."""

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from pymatgen.core.operations import SymmOp
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from sitenet.batch import collate
from sitenet.config import RegressorConfig, SiteNetConfig, paper_config
from sitenet.features import CrystalFeatures, featurize
from sitenet.model import SiteNetEncoder, SiteNetRegressor, to_tensors

CONFIG = SiteNetConfig()


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SiteNetEncoder(CONFIG).eval()


def _embed(model, feats):
    with torch.no_grad():
        return model(**to_tensors(collate(feats, model.config.features))).embedding.numpy()


def test_shapes_and_no_nan(encoder, sample_structures):
    feats = [featurize(s) for s in sample_structures[:8]]
    batch = collate(feats, CONFIG.features)
    with torch.no_grad():
        out = encoder(**to_tensors(batch))
    b, p = batch.site_mask.shape
    assert out.embedding.shape == (8, CONFIG.embedding_dim) and out.sites.shape == (b, p, CONFIG.local_dim)
    assert torch.isfinite(out.embedding).all() and torch.isfinite(out.sites).all()
    assert torch.all(out.sites[~torch.from_numpy(batch.site_mask)] == 0)  # padded sites carry nothing


def test_padding_does_not_change_a_crystal(encoder, sample_structures):
    """A crystal alone, and batched with much larger ones (heavy padding), gets the same embedding."""
    feats = [featurize(s) for s in sample_structures]
    small = min(feats, key=lambda f: f.n_sites)
    big = max(feats, key=lambda f: f.n_primitive * f.n_sites)
    alone = _embed(encoder, [small])[0]
    padded = _embed(encoder, [big, small, big])[1]
    assert np.abs(alone - padded).max() < 1e-5


def test_single_site_single_atom_gives_finite_output(encoder):
    """N = 1: one atom whose only key is itself."""
    f = CrystalFeatures(atomic_numbers=np.array([26]), distance=np.zeros((1, 1), np.float32), images=1)
    emb = _embed(encoder, [f, f])
    assert np.all(np.isfinite(emb)) and np.allclose(emb[0], emb[1], atol=1e-5)


def test_all_padded_row_gives_no_nan(encoder):
    """A padded query row whose keys are all masked (the -inf softmax trap) stays finite."""
    f = CrystalFeatures(atomic_numbers=np.array([8, 8]), distance=np.array([[0, 1.2], [1.2, 0]], np.float32), images=1)
    batch = collate([f], CONFIG.features)
    inputs = to_tensors(batch)
    inputs["atom_mask"] = torch.zeros_like(inputs["atom_mask"])
    with torch.no_grad():
        out = encoder(**inputs)
    assert torch.isfinite(out.embedding).all()


def test_embedding_invariant_to_setting_rotation_supercell_and_order(encoder, sample_structures):
    for s in sample_structures[:8]:
        sup = s.copy()
        sup.make_supercell([2, 2, 2])
        rot = s.copy()
        rot.apply_operation(SymmOp.from_axis_angle_and_translation([0, 1, 1], 71.0))
        perm = Structure.from_sites([s[i] for i in np.random.default_rng(2).permutation(len(s))])
        variants = [s, SpacegroupAnalyzer(s).get_conventional_standard_structure(),
                    SpacegroupAnalyzer(s).get_primitive_standard_structure(), sup, rot, perm]
        emb = _embed(encoder, [featurize(v) for v in variants])
        assert np.abs(emb - emb[0]).max() < 1e-4, s.composition.reduced_formula


def test_regressor_outputs_and_nonnegative_band_gap(sample_structures):
    torch.manual_seed(1)
    feats = collate([featurize(s) for s in sample_structures[:10]], CONFIG.features)
    gap_model = SiteNetRegressor(RegressorConfig(target="band_gap")).eval()
    with torch.no_grad():
        torch.nn.init.constant_(gap_model.head.net[-1].bias, -5.0)  # push raw gaps negative
        out = gap_model(**to_tensors(feats))
    assert set(out) == {"band_gap", "metal_probability", "embedding"}
    assert torch.all(out["band_gap"] >= 0) and torch.all((out["metal_probability"] >= 0) & (out["metal_probability"] <= 1))
    plain = SiteNetRegressor(RegressorConfig(target="band_gap", metal_classifier=False)).eval()
    with torch.no_grad():
        torch.nn.init.constant_(plain.head.net[-1].bias, -5.0)
        assert torch.all(plain(**to_tensors(feats))["band_gap"] >= 0)
    eform = SiteNetRegressor(RegressorConfig(target="formation_energy")).eval()
    with torch.no_grad():
        torch.nn.init.constant_(eform.head.net[-1].bias, -5.0)
        assert torch.any(eform(**to_tensors(feats))["formation_energy"] < 0)  # formation energy may be negative


def test_nonnegative_passes_gradient_through():
    from sitenet.model import nonnegative

    x = torch.tensor([-2.0, 3.0], requires_grad=True)
    y = nonnegative(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 3.0] and x.grad.tolist() == [1.0, 1.0]


def test_save_and_load_round_trip(tmp_path, encoder, sample_structures):
    feats = [featurize(s) for s in sample_structures[:4]]
    encoder.save_pretrained(tmp_path / "enc")
    loaded = SiteNetEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == encoder.config
    assert np.allclose(_embed(loaded, feats), _embed(encoder, feats))
    reg = SiteNetRegressor.from_encoder(loaded, RegressorConfig(target="formation_energy"))
    for name, w in reg.encoder.state_dict().items():
        assert torch.equal(w, encoder.state_dict()[name])
    with pytest.raises(ValueError):
        SiteNetRegressor.from_encoder(loaded, RegressorConfig(encoder=SiteNetConfig(local_dim=16)))


def test_paper_configuration_runs(sample_structures):
    torch.manual_seed(0)
    model = SiteNetEncoder(paper_config()).eval()
    emb = _embed(model, [featurize(s) for s in sample_structures[:3]])
    assert emb.shape == (3, 200) and np.all(np.isfinite(emb))
    assert 250_000 < sum(p.numel() for p in model.parameters()) < 500_000


def test_config_rejects_unknown_keys_and_bad_versions():
    with pytest.raises(ValueError):
        SiteNetConfig(widht=3)
    with pytest.raises(ValueError):
        SiteNetConfig(format_version=2)
    assert SiteNetConfig.model_validate_json(CONFIG.model_dump_json()) == CONFIG
