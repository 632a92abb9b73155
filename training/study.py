"""The label-masking study (method.md D.3-D.5): how much do N labels buy with and without DIM pretraining?

For N in the budgets, each target and several seeds, the same N labelled training rows are used by:
  representation learning: frozen 64-d embeddings (DIM domain-aware, DIM standard, random init) and a
      composition-only baseline (Magpie features of the formula, matminer: ``training.magpie``), each through the SAME
      StandardScaler, then LinearRegression / MLPRegressor(64) / RandomForest (pitfall F.16);
  transfer learning: full fine-tuning from DIM vs from random init (early-stopped on a validation carve).
Scores are on the held-out scored rows. Outputs: ``<output>.json`` (every run, rewritten as runs finish),
``<output>.md`` (mean ± std MAE per N / target / method) and ``<output>.png`` (MAE vs N, log x).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sitenet.config import UNITS
from sitenet.model import SiteNetEncoder, SiteNetRegressor
from training.configs import PretrainConfig, StudyConfig, merged
from training.data import Corpus, load_corpus, make_splits
from training.evaluate import metrics, predict
from training.finetune import finetune, load_encoder
from training.magpie import magpie_features
from training.pretrain import pretrain
from training.probe import embed

log = logging.getLogger(__name__)
REGRESSORS = ("linear", "mlp", "rf")


# ------------------------------------------------------------------------------------------------ features
def fit_predict(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int, *,
                mlp_max_iter: int = 2000) -> np.ndarray:
    """One scikit-learn regressor behind the same StandardScaler for every feature set."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = {"linear": LinearRegression(),
             "mlp": MLPRegressor(hidden_layer_sizes=(64,), max_iter=mlp_max_iter, random_state=seed),
             "rf": RandomForestRegressor(n_estimators=100, random_state=seed, n_jobs=1)}[kind]
    pipe = make_pipeline(StandardScaler(), model)
    with warnings.catch_warnings():  # the MLP's iteration cap is a deliberate budget, not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(x_train, y_train)
    return pipe.predict(x_test)


# ------------------------------------------------------------------------------------------------ the study
def _encoder_names(cfg: StudyConfig) -> tuple[str, ...]:
    """The learned embeddings the study compares ("random" and "composition" come on top)."""
    return ("dim", "dim-standard", *(("dim-matched",) if cfg.matched_ablation and cfg.encoder_dim else ()),
            *cfg.pretrain_variants)


def _encoders(cfg: StudyConfig, needed: set[str]) -> dict[str, str]:
    """Folders of the DIM encoders, pretraining the ones not given. Only ``needed`` ones are pretrained: a resumed
    study whose runs with an encoder are all done does not pretrain it again ("dim" is always needed: it is the
    transfer-learning init)."""
    given = {"dim": cfg.encoder_dim, "dim-standard": cfg.encoder_standard}
    negatives = {"dim-standard": "standard"}
    folders = {}
    for name in _encoder_names(cfg):
        if given.get(name):
            folders[name] = given[name]
        elif name in needed or name == "dim":
            folders[name] = str(pretrain(variant_config(cfg, name, negatives.get(name, "domain-aware"))))
    return folders


def variant_config(cfg: StudyConfig, name: str, negatives: str = "domain-aware") -> PretrainConfig:
    """The pretraining settings of the study's encoder ``name`` (its ``pretrain_variants`` overrides applied)."""
    data = cfg.pretrain.data.model_copy(update={"path": cfg.data.path, "cache_root": cfg.data.cache_root,
                                                "test_ids": cfg.data.test_ids})
    base = cfg.pretrain.model_copy(update={"negatives": negatives, "data": data,
                                           "output": str(Path(cfg.work) / f"pretrain-{name}")}).model_dump()
    return PretrainConfig.model_validate(merged(base, cfg.pretrain_variants.get(name, {})))


def _draws(cfg: StudyConfig) -> list[tuple[int, int]]:
    return [(n, s) for n in cfg.budgets for s in range(cfg.seeds(n))]


def _transfer_draws(cfg: StudyConfig) -> list[tuple[int, int]]:
    if not cfg.transfer:
        return []
    budgets = cfg.transfer_budgets or cfg.budgets
    return [(n, s) for n in budgets for s in range(min(cfg.seeds(n), cfg.transfer_seeds or cfg.seeds(n)))]


def run_study(cfg: StudyConfig) -> dict:
    """Run the whole study and write ``<output>.{json,md,png}``. Returns the JSON content."""
    start = time.monotonic()
    torch.set_num_threads(cfg.pretrain.trainer.threads or torch.get_num_threads())
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    runs = _previous_runs(cfg, output) if cfg.resume else []
    done = {(r["target"], r["n_labels"], r["seed"], r["method"]) for r in runs}
    names = (*_encoder_names(cfg), "random", "composition")

    def missing(target: str, n: int, s: int) -> list[str]:
        return [name for name in names if any((target, n, s, f"repr/{name}/{kind}") not in done
                                                for kind in REGRESSORS)]

    corpus = load_corpus(cfg.data)
    folders = _encoders(cfg, {name for t in cfg.targets for n, s in _draws(cfg) for name in missing(t, n, s)})
    torch.manual_seed(0)
    encoders = {name: load_encoder(folder) for name, folder in folders.items()}
    encoders["random"] = SiteNetEncoder(encoders["dim"].config)  # same architecture, untrained
    result = {"config": cfg.model_dump(mode="json"), "encoders": folders, "runs": runs}
    tests, labels = {}, {}
    for target in cfg.targets:
        test = make_splits(corpus, cfg.data, target=target).test
        if cfg.test_limit and len(test) > cfg.test_limit:
            test = np.sort(np.random.default_rng(0).choice(test, cfg.test_limit, replace=False))
        tests[target], labels[target] = test, corpus.labels(target)

    # representation learning: only the label draws with a missing run (a resumed study) are embedded and fitted
    for target in cfg.targets:
        test, y_all = tests[target], labels[target]
        draws = {(n, s): make_splits(corpus, cfg.data, target=target, n_labels=n, seed=s)
                 for n, s in _draws(cfg) if missing(target, n, s)}
        if not draws:
            continue
        wanted = {name for n, s in draws for name in missing(target, n, s)}
        needed = np.unique(np.concatenate([test, *[np.concatenate([d.train, d.val]) for d in draws.values()]]))
        index = {int(r): k for k, r in enumerate(needed)}
        features = {name: embed(enc, corpus, needed, cfg.data) for name, enc in encoders.items() if name in wanted}
        if "composition" in wanted:
            features["composition"] = magpie_features(corpus, needed)  # the baseline users run
        x_test_rows = [index[int(r)] for r in test]
        for (n, s), split in draws.items():
            rows = np.concatenate([split.train, split.val])  # representation learning uses all N labels
            train_rows = [index[int(r)] for r in rows]
            for name, x in features.items():
                for kind in REGRESSORS:
                    if (target, n, s, f"repr/{name}/{kind}") in done:
                        continue
                    pred = fit_predict(kind, x[train_rows], y_all[rows], x[x_test_rows], seed=s,
                                       mlp_max_iter=cfg.mlp_max_iter)
                    if target == "band_gap":
                        pred = np.clip(pred, 0.0, None)  # a gap is never negative
                    _record(result, target, n, s, f"repr/{name}/{kind}", metrics(target, y_all[test], pred))
            _write(result, output, start)
            log.info("%s N=%d seed=%d: representation runs done (%.0f s)", target, n, s, time.monotonic() - start)

    # transfer learning, the expensive part: ordered by budget and seed, so an interrupted study is balanced
    for n, s in _transfer_draws(cfg):
        for target in cfg.targets:
            for init_name, init in (("dim", folders["dim"]), ("random", "random")):
                if (target, n, s, f"transfer/{init_name}/finetune") in done:
                    continue
                fcfg = cfg.finetune.model_copy(update={
                    "targets": (target,), "init": init, "encoder": encoders["dim"].config, "n_labels": n,
                    "seed": s, "data": cfg.data, "output": str(Path(cfg.work) / f"ft-{target}-{init_name}-{n}-{s}")})
                folder = finetune(fcfg, corpus=corpus, loggers=False)
                model = SiteNetRegressor.from_pretrained(str(folder))
                pred = predict(model, corpus, tests[target], cfg.data, target)
                _record(result, target, n, s, f"transfer/{init_name}/finetune",
                        metrics(target, labels[target][tests[target]], pred))
                _write(result, output, start)
                log.info("%s N=%d seed=%d transfer %s done (%.0f s)", target, n, s, init_name,
                         time.monotonic() - start)
    _write(result, output, start, final=True)
    return result


# changing these only adds or drops runs (transfer runs, a variant's embedding runs); shared runs stay valid
_ADDITIVE = ("transfer_budgets", "transfer_seeds", "pretrain_variants")


def _previous_runs(cfg: StudyConfig, output: Path) -> list[dict]:
    """Runs of an earlier study with the same settings (``resume``), else none. Settings that only add or drop
    transfer runs may differ: the runs the new settings still plan are kept."""
    path = output.with_suffix(".json")
    if not path.exists():
        return []
    previous = json.loads(path.read_text())
    # validated again so that settings added since (at their defaults) compare equal
    then = type(cfg).model_validate({**previous.get("config", {}), "resume": cfg.resume,
                                     **{k: getattr(cfg, k) for k in _ADDITIVE}})
    if then != cfg:
        log.info("%s was written with other settings: starting afresh", path)
        return []
    planned = set(_transfer_draws(cfg))
    before = previous["config"].get("pretrain_variants", {})
    stale = {name for name in before if cfg.pretrain_variants.get(name) != before[name]}  # dropped or changed

    def keep(r: dict) -> bool:
        if r["method"].startswith("transfer/"):
            return (r["n_labels"], r["seed"]) in planned
        return r["method"].split("/")[1] not in stale

    kept = [r for r in previous["runs"] if keep(r)]
    log.info("resuming: %d of %d runs kept from %s", len(kept), len(previous["runs"]), path)
    return kept


def _record(result: dict, target: str, n: int, seed: int, method: str, m: dict) -> None:
    result["runs"].append({"target": target, "n_labels": n, "seed": seed, "method": method, **m})


def _write(result: dict, output: Path, start: float, *, final: bool = False) -> None:
    result["elapsed_seconds"] = time.monotonic() - start
    result["complete"] = final
    output.with_suffix(".json").write_text(json.dumps(result, indent=2))
    summary = summarise(result["runs"])
    output.with_suffix(".md").write_text(markdown(summary, complete=final, config=result["config"]))
    plot(summary, output.with_suffix(".png"))


def summarise(runs: list[dict]) -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """(target, method, N) -> (mean MAE, std MAE, number of seeds)."""
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in runs:
        groups[(r["target"], r["method"], r["n_labels"])].append(r["mae"])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in sorted(groups.items())}


def markdown(summary: dict, *, complete: bool, config: dict | None = None) -> str:
    """One table per target: methods as rows, budgets as columns, 'mean ± std (seeds)' MAE; then the settings."""
    lines = ["# Label-masking study: held-out MAE (mean ± std over seeds)", ""]
    if config is not None:
        lines += ["Produced by `sitenet study training/recipes/study.yaml` (training/study.py); every run and the full "
                  "resolved settings are in the JSON file beside this one. Methods: `repr/<embedding>/<regressor>` fits "
                  "a regressor on frozen embeddings (identical StandardScaler for all); `transfer/<init>/finetune` "
                  "fine-tunes the whole model. Embeddings: `dim` = the zoo encoder, `dim-matched` / `dim-standard` = "
                  "domain-aware / standard negatives pretrained with identical settings, `random` = untrained, "
                  "`composition` = Magpie features of the formula (matminer); any other embedding is a "
                  "`pretrain_variants` entry: the dim-matched settings with the overrides listed below.", "",
                  "Settings: " + json.dumps({k: config[k] for k in ("budgets", "seeds_small", "seeds_large",
                                                                     "transfer_budgets", "transfer_seeds",
                                                                     "pretrain_variants")
                                             if k in config}), ""]
    if not complete:
        lines += ["**Partial results: the study is still running or was interrupted.**", ""]
    for target in sorted({k[0] for k in summary}):
        budgets = sorted({k[2] for k in summary if k[0] == target})
        methods = sorted({k[1] for k in summary if k[0] == target})
        lines += [f"## {target} ({UNITS[target]})", "", "| method | " + " | ".join(f"N={n}" for n in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = [f"{summary[(target, m, n)][0]:.3f} ± {summary[(target, m, n)][1]:.3f} ({summary[(target, m, n)][2]})"
                     if (target, m, n) in summary else "–" for n in budgets]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """MAE vs N (log x): per target, frozen embeddings + random forest on the left (every regressor is in the
    table), transfer learning on the right with the composition forest as the reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({k[0] for k in summary})
    if not targets:
        return
    names = sorted({k[1].split("/")[1] for k in summary if k[1].startswith("repr/")})
    colours = {name: f"C{k % 10}" for k, name in enumerate(names)}
    fig, axes = plt.subplots(len(targets), 2, figsize=(12, 4.2 * len(targets)), squeeze=False, sharey="row")

    def line(ax, target: str, method: str, label: str, **style) -> None:
        pts = sorted((k[2], v) for k, v in summary.items() if k[0] == target and k[1] == method)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", ms=3,
                        capsize=2, lw=1.2, label=label, **style)

    for row, target in zip(axes, targets):
        for name in names:
            line(row[0], target, f"repr/{name}/rf", name, color=colours[name])
        line(row[1], target, "repr/composition/rf", "composition + RF (reference)", color=colours.get("composition"),
             ls=":")
        for init, style in (("dim", "-"), ("random", "--")):
            line(row[1], target, f"transfer/{init}/finetune", f"fine-tuned from {init}", ls=style,
                 color=colours.get(init, "k"))
        for ax, title in zip(row, ("frozen embedding + random forest", "transfer learning (full fine-tuning)")):
            ax.set_xscale("log")
            ax.set_xlabel("labelled training crystals N")
            ax.set_ylabel(f"{target}: held-out MAE ({UNITS[target]})")
            ax.set_title(f"{target}: {title}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
