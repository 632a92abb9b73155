"""Training-step throughput on real mp2018 batches: today's configuration against each lever, and the defaults.

    python benchmarks/train_step.py                 # full run (~35 min on 2 cores): timings + parity check
    python benchmarks/train_step.py --skip-parity   # timings only

Three steps are timed, each the real objective plus backward plus an AdamW step: fine-tuning (formation-energy
L1 through ``FinetuneModule``), DIM with domain-aware negatives and DIM with standard negatives
(``DeepInfoMax``). Batches are the training loader's own (size-bucketed under the recipe's pair budget) from
the labelled mp2018 rows outside the held-out split, taken at evenly spaced quantiles of their padded pair count, so
the sample has the epoch's size mix. Variants, each timed over the same batches, interleaved round by round
(the median of the rounds is reported; compare rows only as ratios within this run):

    baseline      the configuration before this benchmark: Mish, float32, eager, DIM's corrupted passes
                  each re-embedding the pairs, batch 64 / 150,000 padded pairs
    +bf16         bf16 autocast (only where the CPU multiplies bf16 natively)
    +silu         SiLU instead of Mish
    +share        DIM only: the corrupted passes reuse the real pass's pair embedding
    +compile      torch.compile (inductor, dynamic shapes)
    chosen        the defaults: SiLU + bf16 (where native) + shared pair embedding + compile
    chosen-mish   the same with Mish kept (what keeping the published activation costs)
    chosen-big    chosen, with batch 128 / 300,000 padded pairs

Each thread count runs in its own phase because inductor specialises its CPU kernels to the thread count.
The parity check trains the real ``finetune()`` and ``pretrain()`` for a short fixed schedule (3 seeds) in the
baseline and in the chosen numerics and compares validation MAE / DIM loss; compiled and eager losses of the
same weights are compared on the timed batches. Writes benchmarks/results/train_step.{json,md,png}
(``--plot-only`` redraws the PNG from the JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sitenet.config import RegressorConfig, SiteNetConfig
from sitenet.model import SiteNetEncoder, SiteNetRegressor
from training.accel import can_compile, compiled, cpu_bf16_native
from training.configs import DataConfig, FinetuneConfig, PretrainConfig, TrainerConfig
from training.data import load_corpus, loader, make_splits
from training.dim import DeepInfoMax, _uniform, partner_sites
from training.finetune import FinetuneModule
from training.pretrain import INPUTS

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("finetune", "dim-domain-aware", "dim-standard")


class _RecomputingDIM(DeepInfoMax):
    """DIM as it was before the shared pair embedding: every corrupted pass embeds its pair tensor afresh."""

    def forward(self, site, species, pair, parent, site_mask, atom_mask, **kwargs):
        self._pair = pair
        return super().forward(site, species, pair, parent, site_mask, atom_mask, **kwargs)

    @torch.no_grad()
    def corrupted_sites(self, site, species, pair_embedding, parent, site_mask, atom_mask, partner, generator=None):
        enc, pair, fakes = self.encoder, self._pair, []
        if partner is not None:
            pi, pb = partner_sites(site_mask, partner), partner[:, None]
            real = site_mask.unsqueeze(-1).to(site.dtype)
            fakes.append(enc.local(site[pb, pi] * real, species[pb, pi] * site_mask, pair, parent, site_mask,
                                   atom_mask)[0])
            keys = atom_mask & atom_mask[partner]
            pair_s = pair[pb, pi] * (site_mask[:, :, None] & keys[:, None, :]).unsqueeze(-1).to(pair.dtype)
            fakes.append(enc.local(site, species, pair_s, parent, site_mask, keys)[0])
        noise = _uniform(atom_mask, generator)
        perm = torch.argsort(noise.masked_fill(~atom_mask, 2.0), dim=1)
        fakes.append(enc.local(site, species, pair, torch.gather(parent, 1, perm), site_mask, atom_mask)[0])
        return fakes


VARIANTS = {  # name -> (activation, bf16, share, compile, big batches)
    "baseline": ("mish", False, False, False, False),
    "+bf16": ("mish", True, False, False, False),
    "+silu": ("silu", False, False, False, False),
    "+share": ("mish", False, True, False, False),
    "+compile": ("mish", False, False, True, False),
    "chosen": ("silu", True, True, True, False),
    "chosen-mish": ("mish", True, True, True, False),
    "chosen-big": ("silu", True, True, True, True),
}


class Step:
    """One variant of one kind: a fresh seeded model, its optimiser and a callable training step."""

    def __init__(self, kind: str, variant: str):
        activation, self.bf16, share, compile_, _ = VARIANTS[variant]
        self.bf16 = self.bf16 and cpu_bf16_native()
        torch.manual_seed(0)
        encoder = SiteNetEncoder(SiteNetConfig(activation=activation))
        if kind == "finetune":
            model = SiteNetRegressor.from_encoder(encoder, RegressorConfig(encoder=encoder.config))
            self.module = FinetuneModule(model, lr=1e-3, weight_decay=1e-4, scaling={"formation_energy": (-1.5, 1.1)})
            if compile_:
                model.raw = compiled(model.raw)
            self.loss = lambda b: self.module._losses(b)[0]
            params = model.parameters()
        else:
            cls = DeepInfoMax if share else _RecomputingDIM
            self.module = cls(encoder, negatives=kind.removeprefix("dim-"))
            if compile_:
                self.module.forward = compiled(self.module.forward)
            self.loss = lambda b: self.module(**{k: b[k] for k in INPUTS}).loss
            params = self.module.parameters()
        self.optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, amsgrad=True, eps=1e-7)

    def __call__(self, batch) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def sample_batches(corpus, rows, cfg: DataConfig, count: int) -> list[dict]:
    """``count`` training batches at evenly spaced quantiles of the padded pair count (the epoch's size mix)."""
    batches = list(loader(corpus, rows, cfg, target="formation_energy", shuffle=True, seed=0))
    cost = np.array([b["pair"].shape[0] * b["pair"].shape[1] * b["pair"].shape[2] for b in batches])
    order = np.argsort(cost, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, count).round().astype(int)]
    return [batches[i] for i in picks]


def time_phase(threads: int, batch_sets: dict[bool, list], rounds: int) -> dict:
    """Median crystals/s of every (kind, variant) at ``threads``, rounds interleaved."""
    torch.set_num_threads(threads)
    torch._dynamo.reset()
    runnable = [v for v in VARIANTS if can_compile() is None or not VARIANTS[v][3]]
    steps, compile_s = {}, {}
    for kind in KINDS:
        for variant in runnable:
            if kind == "finetune" and variant == "+share":
                continue
            step = Step(kind, variant)
            batches = batch_sets[VARIANTS[variant][4]]
            t = time.perf_counter()
            for b in batches[:2] + batches[-2:]:  # warm-up; compiles the smallest and largest shapes
                step(b)
            compile_s[f"{kind}/{variant}"] = time.perf_counter() - t
            steps[(kind, variant)] = step
    rates: dict[tuple, list[float]] = {key: [] for key in steps}
    for _ in tqdm(range(rounds), desc=f"{threads} thread(s): rounds", leave=False):
        for key, step in steps.items():
            batches = batch_sets[VARIANTS[key[1]][4]]
            t = time.perf_counter()
            for b in batches:
                step(b)
            rates[key].append(sum(len(b["site"]) for b in batches) / (time.perf_counter() - t))
    out = {}
    for (kind, variant), r in rates.items():
        out.setdefault(kind, {})[variant] = {"crystals_per_s": statistics.median(r), "rounds": r}
    for kind, row in out.items():
        base = row["baseline"]["crystals_per_s"]
        for v in row.values():
            v["speedup"] = v["crystals_per_s"] / base
    return {"rates": out, "warmup_s": compile_s}


def compiled_vs_eager(batches: list) -> dict:
    """Largest relative difference between compiled and eager losses of the same weights (chosen numerics)."""
    out = {}
    for kind in KINDS:
        eager, comp = Step(kind, "chosen"), Step(kind, "chosen")
        eager.module.load_state_dict(comp.module.state_dict())
        if kind == "finetune":
            eager.module.model.__dict__.pop("raw", None)
        else:
            eager.module.__dict__.pop("forward", None)
        diffs = []
        with torch.no_grad():
            for b in batches[:6]:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=eager.bf16):
                    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731 - same noise on both sides
                    if kind == "finetune":
                        a, c = float(eager.loss(b)), float(comp.loss(b))
                    else:
                        inputs = {k: b[k] for k in INPUTS}
                        a = float(eager.module(**inputs, generator=gen()).loss)
                        c = float(comp.module(**inputs, generator=gen()).loss)
                diffs.append(abs(a - c) / max(abs(a), 1e-12))
        out[kind] = max(diffs)
    return out


def parity(data: DataConfig, seeds: int, work: Path) -> dict:
    """Short fixed schedules of the real training functions, baseline vs chosen numerics (compile off)."""
    from training.finetune import finetune
    from training.pretrain import pretrain

    numerics = {"baseline": ("mish", "32-true"), "chosen": ("silu", "auto")}
    out: dict = {"finetune": {}, "dim": {}}
    for name, (activation, precision) in numerics.items():
        trainer = dict(precision=precision, compile=False, progress_bar=False, threads=2)
        for seed in tqdm(range(seeds), desc=f"parity {name}", leave=False):
            ft = FinetuneConfig(target="formation_energy", init="random", encoder=SiteNetConfig(activation=activation),
                                data=data.model_copy(update={"limit": 3000}), seed=seed, patience=100,
                                schedule="cosine", trainer=TrainerConfig(max_epochs=6, **trainer),
                                output=str(work / f"ft-{name}-{seed}"))
            t = time.perf_counter()
            folder = finetune(ft, loggers=False)
            record = json.loads((folder / "training.json").read_text())
            out["finetune"].setdefault(name, []).append(
                {"seed": seed, "val_mae": record["best_val_mae"], "seconds": time.perf_counter() - t})
            pt = PretrainConfig(encoder=SiteNetConfig(activation=activation), seed=seed, select="last", resume=False,
                                data=data.model_copy(update={"limit": 3000}),
                                trainer=TrainerConfig(max_epochs=3, **trainer), output=str(work / f"dim-{name}-{seed}"))
            t = time.perf_counter()
            pretrain(pt)
            history = json.loads((Path(pt.output) / "history.json").read_text())["epochs"]
            out["dim"].setdefault(name, []).append(
                {"seed": seed, "val_dim": history[-1]["val/dim"], "seconds": time.perf_counter() - t})
    for kind, key in (("finetune", "val_mae"), ("dim", "val_dim")):
        base = [r[key] for r in out[kind]["baseline"]]
        new = [r[key] for r in out[kind]["chosen"]]
        spread = max(statistics.stdev(base), statistics.stdev(new)) if seeds > 1 else 0.0
        out[kind]["summary"] = {
            "baseline_mean": statistics.mean(base), "chosen_mean": statistics.mean(new),
            "difference": statistics.mean(new) - statistics.mean(base), "seed_std": spread,
            # "within noise": the means differ by less than two seed standard deviations
            "within_noise": abs(statistics.mean(new) - statistics.mean(base)) <= 2 * spread,
            "baseline_seconds": statistics.mean(r["seconds"] for r in out[kind]["baseline"]),
            "chosen_seconds": statistics.mean(r["seconds"] for r in out[kind]["chosen"]),
        }
    return out


def markdown(result: dict) -> str:
    lines = ["# Training-step throughput (crystals/s, median of rounds)", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}. Batches: {result['batches']}.", ""]
    for threads, phase in result["phases"].items():
        lines += [f"## {threads} thread(s)", "", "| variant | " + " | ".join(KINDS) + " |",
                  "|---|" + "---|" * len(KINDS)]
        for variant in VARIANTS:
            cells = []
            for kind in KINDS:
                v = phase["rates"].get(kind, {}).get(variant)
                cells.append(f"{v['crystals_per_s']:.0f} ({v['speedup']:.2f}x)" if v else "–")
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("compiled_vs_eager"):
        lines += ["Compiled vs eager loss of the same weights and batches (largest relative difference): "
                  + ", ".join(f"{k} {v:.1e}" for k, v in result["compiled_vs_eager"].items()), ""]
    if result.get("parity"):
        p = result["parity"]
        lines += ["## Parity: short fixed schedule, baseline vs chosen numerics (Mish fp32 vs SiLU "
                  + ("bf16" if result["bf16_native"] else "fp32") + "), 3,000 training rows", "",
                  "| run | baseline (mean of seeds) | chosen | difference | seed std | within noise | s/run baseline → chosen |",
                  "|---|---|---|---|---|---|---|"]
        for kind, label in (("finetune", "fine-tune 6 epochs, val MAE eV/atom"), ("dim", "DIM 3 epochs, val DIM loss")):
            s = p[kind]["summary"]
            lines.append(f"| {label} | {s['baseline_mean']:.4f} | {s['chosen_mean']:.4f} | {s['difference']:+.4f} | "
                         f"{s['seed_std']:.4f} | {'yes' if s['within_noise'] else 'NO'} | "
                         f"{s['baseline_seconds']:.0f} → {s['chosen_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Speed-up over the old configuration, one panel per thread count, bars per variant and step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 3.8), sharey=True, squeeze=False)
    width = 0.8 / len(KINDS)
    for ax, (threads, phase) in zip(axes[0], phases.items()):
        for k, kind in enumerate(KINDS):
            ys = [phase["rates"].get(kind, {}).get(v, {}).get("speedup", 0.0) for v in VARIANTS]
            ax.bar([i + (k - 1) * width for i in range(len(VARIANTS))], ys, width, label=kind)
        ax.axhline(1.0, color="grey", lw=1)
        ax.axhline(3.0, color="grey", lw=1, ls="--")
        ax.set_xticks(range(len(VARIANTS)), list(VARIANTS), rotation=30, ha="right")
        ax.set(title=f"{threads} thread(s)", ylabel="speed-up over baseline (crystals/s)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--batches", type=int, default=12, help="batches per timed pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="parity-check seeds")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "train_step"))
    parser.add_argument("--plot-only", action="store_true", help="redraw <output>.png from <output>.json")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.output + ".json").read_text()), Path(args.output + ".png"))
        return 0
    logging.basicConfig(level=logging.WARNING)

    data = DataConfig()  # the recipes' batching: 64 crystals, 150,000 padded pairs, P <= 50
    corpus = load_corpus(data)
    rows = make_splits(corpus, data, target="formation_energy").train  # labelled rows: finite fine-tuning loss
    big = data.model_copy(update={"batch_size": 128, "max_pairs": 300_000})
    batch_sets = {False: sample_batches(corpus, rows, data, args.batches),
                  True: sample_batches(corpus, rows, big, max(args.batches // 2, 2))}
    result = {
        "command": "python benchmarks/train_step.py" + (" --skip-parity" if args.skip_parity else ""),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"bf16 native: {cpu_bf16_native()}, compile: {can_compile() or 'available'}",
        "bf16_native": cpu_bf16_native(),
        "batches": f"{args.batches} of batch 64 / 150k pairs ({sum(len(b['site']) for b in batch_sets[False])} crystals), "
                   f"{len(batch_sets[True])} of batch 128 / 300k ({sum(len(b['site']) for b in batch_sets[True])} crystals)",
        "phases": {},
    }
    for threads in args.threads:
        result["phases"][str(threads)] = time_phase(threads, batch_sets, args.rounds)
        print(markdown(result), flush=True)
    torch.set_num_threads(max(args.threads))
    if can_compile() is None:
        result["compiled_vs_eager"] = compiled_vs_eager(batch_sets[False])
    if not args.skip_parity:
        with tempfile.TemporaryDirectory() as work:
            result["parity"] = parity(data, args.seeds, Path(work))
    text = markdown(result)
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output + ".json").write_text(json.dumps(result, indent=2))
    Path(args.output + ".md").write_text(text)
    plot(result, Path(args.output + ".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
