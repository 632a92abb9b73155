"""Bounded work per input: symmetry bombs refused by arithmetic before any expansion, and the CPU-time limit
and request deadline of ``sitenet.limits`` as the backstop for everything else.

The CIFs are real (pymatgen parses them); the slow one is a legitimate 384-site symmetrised CIF that only
pymatgen reads (symmetry by space-group name, sites by label alone), about 0.3-0.5 s of pymatgen's time.
"""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import pytest

from sitenet.cif import _distinct_images, _implied_ops
from sitenet.errors import DeadlineExceededError, TimeLimitError, TooManySitesError
from sitenet.limits import call_limited, deadline
from sitenet.structure import read_crystal, read_structure

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "data" / "bad_cifs"
BOMBS = sorted(BAD.glob("too_many_sites__symmetry_*.cif"))


def _slow_cif() -> str:
    """F m -3 m by name only, two general positions named by label alone (no type symbols): 384 sites that only
    pymatgen reads (guessing elements from labels is its own), regenerating the group each time (~0.3 s)."""
    head = (BAD / "too_many_sites__symmetry_bomb_space_group_name.cif").read_text().split("loop_")[0]
    rows = ["  C0  0.0500  0.1100  0.1700", "  Si1  0.1300  0.2100  0.3100"]
    return head + "loop_\n _atom_site_label\n _atom_site_fract_x\n _atom_site_fract_y\n _atom_site_fract_z\n" \
        + "\n".join(rows) + "\n"


@pytest.mark.parametrize("path", BOMBS, ids=lambda p: p.name)
def test_symmetry_bombs_are_refused_in_milliseconds_before_expansion(path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(TooManySitesError) as err:
        read_crystal(path.read_bytes())
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{path.name} took {elapsed:.2f} s to refuse"
    assert err.value.http_status == 413
    assert "symmetry operations make" in err.value.message and err.value.detail["operations"] == 192


def test_the_counted_expansion_is_pymatgens_site_count(sample_frame) -> None:
    """On real symmetrised crystals (operation loops) and by space-group name, the count made without
    expanding equals the number of sites pymatgen builds."""
    import gemmi
    from pymatgen.io.cif import CifParser, CifWriter

    from sitenet.cif import _check_block, _snap_thirds

    checked = 0
    for cif in sample_frame.cif.iloc[::20]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            text = str(CifWriter(CifParser.from_str(cif).parse_structures(primitive=False)[0], symprec=0.01))
            expected = len(CifParser.from_str(text).parse_structures(primitive=False)[0])
        block = gemmi.cif.read_string(text).sole_block()
        sites = _check_block(block, max_sites=500)
        ops = _implied_ops(block)
        assert ops is not None
        assert sites.coords is not None
        assert _distinct_images(_snap_thirds(sites.coords), ops) == expected
        checked += 1
    assert checked == 20


def test_a_read_past_its_cpu_budget_stops_with_a_typed_413() -> None:
    text = _slow_cif()
    start = time.perf_counter()
    with pytest.raises(TimeLimitError) as err:
        read_structure(text, max_cpu_s=0.02)
    assert time.perf_counter() - start < 0.5
    assert err.value.code == "input_too_costly" and err.value.http_status == 413
    assert "0.02 s of CPU time" in err.value.message
    assert len(read_structure(text)) == 384  # the thread is unharmed, and the default budget is enough


def test_a_read_past_the_request_deadline_stops_with_504() -> None:
    text = _slow_cif()
    start = time.perf_counter()
    with deadline(time.monotonic() + 0.05), pytest.raises(DeadlineExceededError) as err:
        read_structure(text)
    assert time.perf_counter() - start < 0.5
    assert err.value.code == "timeout" and err.value.http_status == 504
    with deadline(time.monotonic() - 1), pytest.raises(DeadlineExceededError):  # already past: nothing starts
        read_structure("data_x\n")


def test_only_the_guarded_call_is_interrupted_and_nothing_arrives_late() -> None:
    done = threading.Event()
    other: list[float] = []

    def busy_elsewhere() -> None:  # an unguarded thread spinning through the same period
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            other.append(sum(range(100)))
        done.set()

    thread = threading.Thread(target=busy_elsewhere)
    thread.start()
    with pytest.raises(TimeLimitError):
        call_limited(lambda: [sum(range(1000)) for _ in range(10**7)], cpu_s=0.05, what="spinning")
    thread.join()
    assert done.is_set() and other
    for _ in range(20):  # calls that end just inside their budget leave no interruption pending
        assert call_limited(lambda: sum(range(20_000)), cpu_s=0.002, what="summing") == sum(range(20_000))
    time.sleep(0.05)
    assert sum(range(10)) == 45


def test_nested_limits_report_the_one_that_expired() -> None:
    def inner() -> None:
        call_limited(lambda: [x for x in range(10**9)], cpu_s=10, what="inner")

    with pytest.raises(TimeLimitError, match="outer"):
        call_limited(inner, cpu_s=0.05, what="outer")
