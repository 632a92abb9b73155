"""What one prediction costs in arithmetic, and what that means for throughput on a CPU.

Counts, from each zoo model's ``config.json``, the multiply-adds and the element-wise activations (Mish +
LayerNorm) that the model spends on one (primitive site, supercell site) pair: the pair work is O(P x N)
and dominates; the per-site and per-crystal layers (O(P)) are left out, so the counts are a floor. With the
mean pair count and the measured ms per crystal of ``benchmarks/results/onnx_graph.json`` (run
``benchmarks/onnx_graph.py`` first) it prints the arithmetic rate ONNX Runtime reaches, and the rate that a
target throughput would need.

    python benchmarks/model_cost.py                  # the bundled models, target 1,000 crystals/s
    python benchmarks/model_cost.py --target 200
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pair_cost(encoder: dict) -> tuple[int, int]:
    """(multiply-adds, activations) per site pair of one encoder config (``SiteNetConfig`` as a dict).

    Mirrors ``sitenet/model.py``: the pair embedding (G -> R); in each block the bond layer's first layers on
    the pair part (R -> K, K = first attention + first value width, + R where pairs are updated), the rest of
    the attention MLP down to H logits, the rest of the value MLP up to V, and the weighted sum (H x V).
    Every hidden layer is followed by Mish + LayerNorm; each of those values counts as one activation.
    """
    spec = encoder["features"]
    g, r = 1 + spec["rbf_count"], encoder["pair_width"]
    h, v = encoder["heads"], encoder["head_width"]
    attention, values = encoder["attention_hidden"], encoder["value_hidden"]
    macs, acts = g * r, r
    for block in range(encoder["blocks"]):
        update = block < encoder["blocks"] - 1
        firsts = [attention[0] if attention else h, values[0] if values else v] + ([r] if update else [])
        macs += r * sum(firsts)
        acts += firsts[0] * bool(attention) + firsts[1] + (r if update else 0)
        widths = attention + [h]
        macs += sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        acts += sum(widths[1:-1])
        widths = values + [v]
        macs += sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        acts += sum(widths[1:]) if values else 0
        macs += h * v
    return macs, acts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", default=str(REPO / "benchmarks" / "results" / "onnx_graph.json"),
                        help="onnx_graph.py results (measured ms per crystal)")
    parser.add_argument("--threads", type=int, default=1, help="which measured thread count to use")
    parser.add_argument("--target", type=float, default=1000.0, help="crystals/s to cost out")
    args = parser.parse_args(argv)

    measured = json.loads(Path(args.graphs).read_text())
    pairs = measured["mean_pairs_per_crystal"]
    print(f"mean pairs per crystal: {pairs} ({measured['crystals']} crystals, {Path(measured['data']).name})")
    total_flop = total_acts = 0.0
    for name, entry in measured["models"].items():
        config = json.loads((REPO / "zoo" / name / "config.json").read_text())
        macs, acts = pair_cost(config.get("encoder", config))
        ms = entry[f"threads_{args.threads}"]["current"]["ms_per_crystal"]
        flop = 2 * macs * pairs  # per crystal
        total_flop, total_acts = total_flop + flop, total_acts + acts * pairs
        print(f"{name}: {macs:,} multiply-adds + {acts} activations per pair; {flop / 1e6:.1f} MFLOP per crystal; "
              f"measured {ms} ms per crystal at {args.threads} thread(s) = {flop / ms / 1e6:.1f} GFLOP/s")
    print(f"all {len(measured['models'])} models: {total_flop / 1e6:.1f} MFLOP and {total_acts / 1e6:.2f} M "
          f"activations per crystal; {args.target:g} crystals/s needs {total_flop * args.target / 1e9:.0f} GFLOP/s "
          f"of matrix products and {total_acts * args.target / 1e9:.2f} G activations/s, before parsing and "
          "featurising")
    return 0


if __name__ == "__main__":
    sys.exit(main())
