"""The hardware paths of a training step: which precision and whether to compile, with their fallbacks."""

import logging

import pytest
import torch

from training import accel


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, caplog, native, expected):
    monkeypatch.setattr(accel, "cpu_bf16_native", lambda: native)
    with caplog.at_level(logging.INFO, logger="training.accel"):
        assert accel.resolve_precision("auto", "cpu") == expected
    assert expected in caplog.text  # the log says which path runs


def test_explicit_precision_is_kept(monkeypatch):
    monkeypatch.setattr(accel, "cpu_bf16_native", lambda: True)
    assert accel.resolve_precision("32-true", "cpu") == "32-true"
    assert accel.resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    accel.cpu_bf16_native.cache_clear()
    try:
        fake = tmp_path / "cpuinfo"
        fake.write_text("flags\t\t: fpu sse avx512f avx512_bf16\n")
        monkeypatch.setattr(accel, "Path", lambda _: fake)
        assert accel.cpu_bf16_native()
        accel.cpu_bf16_native.cache_clear()
        fake.write_text("flags\t\t: fpu sse avx512f\n")  # AVX512 alone emulates bf16: not native
        assert not accel.cpu_bf16_native()
    finally:
        accel.cpu_bf16_native.cache_clear()


def test_compile_resolution(monkeypatch):
    monkeypatch.setattr(accel, "can_compile", lambda: None)
    assert accel.should_compile(True, 10)
    assert not accel.should_compile(False, 10**6)
    assert not accel.should_compile("auto", accel.COMPILE_MIN_STEPS - 1)  # too short to repay compilation
    assert accel.should_compile("auto", accel.COMPILE_MIN_STEPS)
    monkeypatch.setattr(accel, "can_compile", lambda: "no C++ compiler")
    assert not accel.should_compile(True, 10**6)  # falls back to eager instead of failing
    assert not accel.should_compile("auto", 10**6)


def test_compile_unavailable_without_a_cxx_compiler(monkeypatch):
    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    monkeypatch.setenv("CXX", "")
    monkeypatch.setattr(accel.shutil, "which", lambda name: None)
    assert "C++" in accel.can_compile()
    monkeypatch.setenv("TORCHDYNAMO_DISABLE", "1")
    assert accel.can_compile() == "TORCHDYNAMO_DISABLE=1"


def test_bf16_autocast_step_stays_close_to_fp32(make_batch, tiny_config):
    """One DIM loss under bf16 autocast is the float32 loss to bf16 accuracy (master weights stay float32)."""
    from sitenet.model import SiteNetEncoder
    from training.dim import DeepInfoMax

    torch.manual_seed(0)
    dim = DeepInfoMax(SiteNetEncoder(tiny_config.model_copy(update={"activation": "silu"})))
    batch = make_batch([0, 5, 9, 30])
    fp32 = dim(**batch, noise=False, generator=torch.Generator().manual_seed(0)).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = dim(**batch, noise=False, generator=torch.Generator().manual_seed(0)).loss
    assert bf16.dtype == torch.float32 and all(p.dtype == torch.float32 for p in dim.parameters())
    assert abs(bf16.item() - fp32.item()) < 0.02 * abs(fp32.item())
