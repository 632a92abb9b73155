"""What this machine offers a training step, decided once and logged: precision and compilation.

``precision="auto"`` is bf16 autocast where the hardware multiplies bf16 natively (a CPU with AMX or AVX512-BF16,
a GPU with bf16) and float32 elsewhere: on a CPU without those units PyTorch emulates bf16 and is slower than
float32. ``compile="auto"`` fuses the step's element-wise passes with ``torch.compile`` (inductor, which needs a
C++ compiler on CPU) when the run is long enough to repay the one-off compilation (about a minute per graph
on 2 cores). Weights are never affected: autocast keeps float32 master weights, and a compiled function is
set as an instance attribute, so state dicts, checkpoints and exports see the plain module.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Fewer optimiser steps than this and compilation (about a minute per graph) costs more than it saves.
COMPILE_MIN_STEPS = 1000
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def cpu_bf16_native() -> bool:
    """True where the CPU multiplies bf16 in hardware (AMX or AVX512-BF16, read from /proc/cpuinfo).
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` also says yes on plain AVX512, where bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision for a run: ``auto`` -> ``bf16-mixed`` where bf16 is native, else ``32-true``;
    anything else is returned unchanged."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        chosen = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
        why = "GPU with bf16" if chosen == "bf16-mixed" else "GPU without bf16"
    else:
        chosen = "bf16-mixed" if cpu_bf16_native() else "32-true"
        why = "CPU with AMX/AVX512-BF16" if chosen == "bf16-mixed" else "CPU without native bf16"
    log.info("precision: %s (%s)", chosen, why)
    return chosen


def can_compile() -> str | None:
    """None if ``torch.compile`` can run here, else why not."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        return "TORCHDYNAMO_DISABLE=1"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "no C++ compiler for inductor's CPU kernels"
    return None


def should_compile(setting: bool | str, steps: int | float) -> bool:
    """Resolve ``compile`` (True / False / "auto") for a run of ``steps`` optimiser steps, and log it."""
    if setting is False:
        log.info("compile: off (setting)")
        return False
    missing = can_compile()
    if missing:
        if setting is True:
            log.warning("compile requested but unavailable (%s): running eagerly", missing)
        else:
            log.info("compile: off (%s)", missing)
        return False
    if setting == "auto" and steps < COMPILE_MIN_STEPS:
        log.info("compile: off (auto: %d steps < %d repay no compilation)", steps, COMPILE_MIN_STEPS)
        return False
    log.info("compile: on (torch.compile, dynamic shapes)")
    return True


#: Graphs dynamo may keep per function. A run needs a few (train and validation mode, the pieces between the
#: eager random draws, the odd B = 1 or P = 1 specialisation); past the limit dynamo silently runs eagerly.
RECOMPILE_LIMIT = 64


def compiled(fn: Callable) -> Callable:
    """``fn`` (a bound method) compiled for the variable (B, P, N) shapes of crystal batches."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           16 * RECOMPILE_LIMIT)
    return torch.compile(fn, dynamic=True)
