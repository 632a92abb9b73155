"""The label-masking study (method.md D.3-D.5): how much do N labels buy with and without DIM pretraining?

For N in the budgets, each target and several seeds, the same N labelled training rows are used by:
  representation learning: frozen features (DIM encoders, random init, Magpie composition features via matminer
      (``training.magpie``), DIM + Magpie side by side, and precomputed ones such as CHGNet's), each through the
      SAME StandardScaler, then LinearRegression / MLPRegressor(64) / RandomForest (pitfall F.16);
  transfer learning: full fine-tuning from the DIM encoder, from random init and from any ``transfer_from`` init
      (e.g. the model trained on all labels of the other target), all with one protocol: every one of the N
      labels trains, for a fixed cosine schedule (``finetune.trainer.max_epochs``, at least ``min_steps``
      optimiser steps), and the last epoch is scored. No validation carve and no early stopping: at N = 250 a 5%
      carve is ~12 crystals, too few to choose an epoch, and it stopped runs at epochs 6-9 (issue 13).
Scores are on the held-out scored rows. Outputs: ``<output>.json`` (every run, rewritten as runs finish),
``<output>.md`` (mean ± std MAE per N / target / method, and the DIM verdicts) and ``<output>.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sitenet.config import UNITS, SiteNetConfig
from sitenet.model import SiteNetEncoder, SiteNetRegressor
from training.configs import FinetuneConfig, PretrainConfig, StudyConfig, merged
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
    """The learned embeddings the study pretrains or is given as DIM encoders (more come on top: ``repr_names``)."""
    return ("dim", "dim-standard", *(("dim-matched",) if cfg.matched_ablation and cfg.encoder_dim else ()),
            *cfg.pretrain_variants)


def repr_names(cfg: StudyConfig) -> tuple[str, ...]:
    """Every frozen representation the study fits regressors on."""
    return (*_encoder_names(cfg), *cfg.encoders, "random", "composition", "dim+composition", *cfg.embedding_files)


def transfer_inits(cfg: StudyConfig, target: str, dim_folder: str) -> dict[str, str]:
    """Fine-tuning inits for ``target``: the DIM encoder, random init, then ``transfer_from``."""
    extra = {name: init[target] if isinstance(init, dict) else init for name, init in cfg.transfer_from.items()}
    return {"dim": dim_folder, "random": "random", **extra}


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
    return {**folders, **cfg.encoders}


def variant_config(cfg: StudyConfig, name: str, negatives: str = "domain-aware") -> PretrainConfig:
    """The pretraining settings of the study's encoder ``name`` (its ``pretrain_variants`` overrides applied)."""
    data = cfg.pretrain.data.model_copy(update={"path": cfg.data.path, "cache_root": cfg.data.cache_root,
                                                "test_ids": cfg.data.test_ids})
    base = cfg.pretrain.model_copy(update={"negatives": negatives, "data": data,
                                           "output": str(Path(cfg.work) / f"pretrain-{name}")}).model_dump()
    return PretrainConfig.model_validate(merged(base, cfg.pretrain_variants.get(name, {})))


def _draws(cfg: StudyConfig) -> list[tuple[int, int]]:
    return [(n, s) for n in cfg.budgets for s in range(cfg.seeds(n))]


def _transfer_draws(cfg: StudyConfig, init: str) -> list[tuple[int, int]]:
    """The (N, seed) draws fine-tuned from the init named ``init``."""
    if not cfg.transfer:
        return []
    budgets = cfg.transfer_from_budgets.get(init) or cfg.transfer_budgets or cfg.budgets
    return [(n, s) for n in budgets for s in range(min(cfg.seeds(n), cfg.transfer_seeds or cfg.seeds(n)))]


def _with_parts(names: set[str]) -> set[str]:
    """``names`` plus the features a combined one is built from."""
    return names | {"dim", "composition"} if "dim+composition" in names else names


def transfer_config(cfg: StudyConfig, target: str, init: str, encoder: SiteNetConfig, n: int, seed: int, output: str,
                    max_epochs: int | None = None) -> FinetuneConfig:
    """The study's fine-tuning run: the protocol (all N labels, no validation carve, ``epochs(cfg, n)`` unless
    ``max_epochs`` says otherwise, the last epoch kept) for one target, init and label draw."""
    return cfg.finetune.model_copy(update={
        "targets": (target,), "init": init, "encoder": encoder, "n_labels": n, "seed": seed, "output": output,
        "data": cfg.data.model_copy(update={"val_fraction": 0.0}),
        "trainer": cfg.finetune.trainer.model_copy(update={"max_epochs": max_epochs or epochs(cfg, n)})})


def epochs(cfg: StudyConfig, n: int) -> int:
    """Fine-tuning epochs at N labels: ``finetune.trainer.max_epochs``, or more to reach ``min_steps``."""
    return max(cfg.finetune.trainer.max_epochs, math.ceil(cfg.min_steps / math.ceil(n / cfg.data.batch_size)))


def _test_rows(cfg: StudyConfig, corpus: Corpus, target: str) -> np.ndarray:
    test = make_splits(corpus, cfg.data, target=target).test
    if cfg.test_limit and len(test) > cfg.test_limit:
        test = np.sort(np.random.default_rng(0).choice(test, cfg.test_limit, replace=False))
    return test


def study_rows(cfg: StudyConfig, corpus: Corpus | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, CIF texts) of every crystal the study reads (each target's test rows and all label draws): what an
    ``embedding_files`` entry must cover."""
    corpus = corpus or load_corpus(cfg.data)
    rows = []
    for target in cfg.targets:
        rows.append(_test_rows(cfg, corpus, target))
        for n, s in _draws(cfg):
            split = make_splits(corpus, cfg.data, target=target, n_labels=n, seed=s)
            rows += [split.train, split.val]
    rows = np.unique(np.concatenate(rows))
    return corpus.dataset.ids[rows], np.asarray(corpus.dataset.cifs, dtype=object)[rows]


def embedding_file(path: str, ids: np.ndarray) -> np.ndarray:
    """Rows of a precomputed embedding file (``ids``, ``x``) in the order of ``ids``.

    Raises:
        ValueError: ids the file lacks (named), so no crystal is silently dropped from a comparison."""
    with np.load(path, allow_pickle=False) as f:
        known = {str(i): k for k, i in enumerate(f["ids"])}
        missing = [str(i) for i in ids if str(i) not in known]
        if missing:
            raise ValueError(f"{path} has no embedding for {len(missing)} crystal(s) the study needs, e.g. "
                             f"{missing[:5]}; regenerate it from `sitenet study RECIPE --rows FILE`")
        return np.asarray(f["x"], dtype=np.float64)[[known[str(i)] for i in ids]]


def run_study(cfg: StudyConfig) -> dict:
    """Run the whole study and write ``<output>.{json,md,png}``. Returns the JSON content.

    Several processes may run one study at once (one per core): each claims the next run no live process has
    claimed (``<output>.claims.json``; the representation runs are one claim) and merges what it finishes into
    ``<output>.json`` under a lock. ``resume: false`` starts afresh and so is for one process."""
    start = time.monotonic()
    torch.set_num_threads(cfg.pretrain.trainer.threads or torch.get_num_threads())
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        for suffix in (".json", ".claims.json"):
            output.with_suffix(suffix).unlink(missing_ok=True)
    runs = _previous_runs(cfg, output) if cfg.resume else []
    done = {_key(r) for r in runs}
    names = repr_names(cfg)

    def missing(target: str, n: int, s: int) -> list[str]:
        return [name for name in names if any((target, n, s, f"repr/{name}/{kind}") not in done
                                                for kind in REGRESSORS)]

    corpus = load_corpus(cfg.data)
    representing = _claim(output, cfg, "representations")  # else another live process has them
    needed_names = _with_parts({name for t in cfg.targets for n, s in _draws(cfg) for name in missing(t, n, s)}
                               if representing else {"dim"})
    folders = _encoders(cfg, needed_names)
    torch.manual_seed(0)
    encoders = {name: load_encoder(folder).eval() for name, folder in folders.items()}
    encoders["random"] = SiteNetEncoder(encoders["dim"].config)  # same architecture, untrained
    result = {"config": cfg.model_dump(mode="json"), "encoders": folders, "runs": runs}
    tests = {target: _test_rows(cfg, corpus, target) for target in cfg.targets}
    labels = {target: corpus.labels(target) for target in cfg.targets}

    # representation learning: only the label draws with a missing run (a resumed study) are embedded and fitted
    for target in cfg.targets if representing else ():
        test, y_all = tests[target], labels[target]
        draws = {(n, s): make_splits(corpus, cfg.data, target=target, n_labels=n, seed=s)
                 for n, s in _draws(cfg) if missing(target, n, s)}
        if not draws:
            continue
        wanted = _with_parts({name for n, s in draws for name in missing(target, n, s)})
        needed = np.unique(np.concatenate([test, *[np.concatenate([d.train, d.val]) for d in draws.values()]]))
        index = {int(r): k for k, r in enumerate(needed)}
        features = {name: embed(enc, corpus, needed, cfg.data) for name, enc in encoders.items() if name in wanted}
        if "composition" in wanted:
            features["composition"] = magpie_features(corpus, needed)  # the baseline users run
        if "dim+composition" in wanted:
            features["dim+composition"] = np.hstack([features["dim"], features["composition"]])
        for name, path in cfg.embedding_files.items():
            if name in wanted:
                features[name] = embedding_file(path, corpus.dataset.ids[needed])
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

    # transfer learning, the expensive part. Every init gets the same protocol: all N labels, a fixed schedule,
    # the last epoch (no validation carve).
    jobs = transfer_jobs(cfg, folders["dim"])
    for n, s, target, init_name, init in jobs:
        method = f"transfer/{init_name}/finetune"
        if (target, n, s, method) in done or not _claim(output, cfg, (target, n, s, method)):
            continue
        fcfg = transfer_config(cfg, target, init, encoders["dim"].config, n, s,
                               str(Path(cfg.work) / f"ft-{target}-{init_name}-{n}-{s}"))
        folder = finetune(fcfg, corpus=corpus, loggers=False)
        model = SiteNetRegressor.from_pretrained(str(folder))
        pred = predict(model, corpus, tests[target], cfg.data, target)
        _record(result, target, n, s, method, metrics(target, labels[target][tests[target]], pred))
        _write(result, output, start)
        log.info("%s N=%d seed=%d transfer %s done (%.0f s)", target, n, s, init_name,
                 time.monotonic() - start)
    planned = {(t, n, s, f"repr/{name}/{kind}") for t in cfg.targets for n, s in _draws(cfg) for name in names
               for kind in REGRESSORS}
    planned |= {(t, n, s, f"transfer/{name}/finetune") for n, s, t, name, _ in jobs}
    _write(result, output, start, planned=planned)
    return result


def transfer_jobs(cfg: StudyConfig, dim_folder: str) -> list[tuple[int, int, str, str, str]]:
    """Every fine-tuning run as (N, seed, target, init name, init), ordered by budget and seed so that an
    interrupted study is balanced."""
    jobs = [(n, s, target, name, init) for target in cfg.targets
            for name, init in transfer_inits(cfg, target, dim_folder).items() for n, s in _transfer_draws(cfg, name)]
    return sorted(jobs, key=lambda job: job[:2])  # stable: targets and inits keep their order within a draw


# changing these only adds or drops runs (transfer runs, an embedding's runs); shared runs stay valid
_ADDITIVE = ("transfer_budgets", "transfer_seeds", "transfer_from_budgets", "pretrain_variants", "encoders",
             "embedding_files", "transfer_from")


def _previous_runs(cfg: StudyConfig, output: Path) -> list[dict]:
    """Runs of an earlier study with the same settings (``resume``), else none. Settings that only add or drop
    runs may differ: the runs the new settings still plan, with unchanged definitions, are kept."""
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

    def stale(key: str) -> set[str]:  # names whose definition was dropped or changed
        before, now = previous["config"].get(key, {}), getattr(cfg, key)
        return {name for name in before if now.get(name) != before[name]}

    stale_repr = stale("pretrain_variants") | stale("encoders") | stale("embedding_files")
    stale_init = stale("transfer_from")

    def keep(r: dict) -> bool:
        kind, name, _ = r["method"].split("/")
        if kind == "transfer":
            return (r["n_labels"], r["seed"]) in _transfer_draws(cfg, name) and name not in stale_init
        return name not in stale_repr

    kept = [r for r in previous["runs"] if keep(r)]
    log.info("resuming: %d of %d runs kept from %s", len(kept), len(previous["runs"]), path)
    return kept


def _record(result: dict, target: str, n: int, seed: int, method: str, m: dict) -> None:
    result["runs"].append({"target": target, "n_labels": n, "seed": seed, "method": method, **m})


def _key(r: dict) -> tuple:
    return r["target"], r["n_labels"], r["seed"], r["method"]


def _write(result: dict, output: Path, start: float, *, planned: set | None = None) -> None:
    """Write ``result``, first merged with the runs other processes of this study wrote (under the lock);
    complete once every ``planned`` run is in it."""
    path = output.with_suffix(".json")
    with _locked(output):
        mine = {_key(r) for r in result["runs"]}
        result["runs"] += [r for r in _runs_on_disk(output, result["config"]) if _key(r) not in mine]
        result["elapsed_seconds"] = time.monotonic() - start
        result["complete"] = planned is not None and planned <= {_key(r) for r in result["runs"]}
        path.write_text(json.dumps(result, indent=2))
        _render(result, output)


def _runs_on_disk(output: Path, config: dict) -> list[dict]:
    path = output.with_suffix(".json")
    if not path.exists():
        return []
    on_disk = json.loads(path.read_text())
    return on_disk["runs"] if on_disk["config"] == config else []


def _claim(output: Path, cfg: StudyConfig, key: tuple | str) -> bool:
    """Claim a run (or the representation runs) for this process: False when it is done or a live process holds it."""
    path = output.with_suffix(".claims.json")
    name = json.dumps(key)
    with _locked(output):
        if key in {_key(r) for r in _runs_on_disk(output, cfg.model_dump(mode="json"))}:
            return False
        claims = json.loads(path.read_text()) if path.exists() else {}
        holder = claims.get(name)
        if holder not in (None, os.getpid()) and _alive(holder):
            return False
        claims[name] = os.getpid()
        path.write_text(json.dumps(claims, indent=0))
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def _locked(output: Path):
    """Exclusive access to a study's files among the processes sharing it (POSIX file lock; elsewhere one process)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(output.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def report(cfg: StudyConfig) -> dict:
    """Rewrite ``<output>.md`` and ``.png`` from ``<output>.json`` as it stands (a running or stopped study)."""
    result = json.loads(Path(cfg.output).with_suffix(".json").read_text())
    _render(result, Path(cfg.output))
    return result


def _render(result: dict, output: Path) -> None:
    summary = summarise(result["runs"])
    units = {**result["config"]["finetune"].get("units", {}), **UNITS}
    output.with_suffix(".md").write_text(markdown(summary, complete=result["complete"], config=result["config"],
                                                  units=units))
    plot(summary, output.with_suffix(".png"), units=units, title=result["config"].get("title", ""))


def summarise(runs: list[dict]) -> dict[tuple[str, str, int], tuple[float, float, int]]:
    """(target, method, N) -> (mean MAE, std MAE, number of seeds)."""
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in runs:
        groups[(r["target"], r["method"], r["n_labels"])].append(r["mae"])
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in sorted(groups.items())}


def best_dim(summary: dict, target: str, n: int) -> tuple[str, float] | None:
    """The DIM-based method with the lowest mean MAE at (target, N): (method, MAE)."""
    rows = [(v[0], k[1]) for k, v in summary.items() if k[0] == target and k[2] == n and _is_dim(k[1])]
    return (min(rows)[1], min(rows)[0]) if rows else None


def _is_dim(method: str) -> bool:
    """Whether a method uses a DIM-pretrained encoder (any of them, alone or beside Magpie)."""
    return method.split("/")[1].startswith("dim")


def markdown(summary: dict, *, complete: bool, config: dict | None = None, units: dict[str, str] | None = None) -> str:
    """One table per target: methods as rows, budgets as columns, 'mean ± std (seeds)' MAE; then the verdicts
    (DIM against random init at the same protocol, and the best DIM-based method against Magpie + RF)."""
    units = units or UNITS
    lines = ["# Label-masking study: held-out MAE (mean ± std over seeds)", ""]
    if config is not None:
        lines += ["Produced by `sitenet study <recipe>` (training/study.py); every run and the full resolved settings "
                  "are in the JSON file beside this one. Methods: `repr/<embedding>/<regressor>` fits a regressor on "
                  "frozen features (identical StandardScaler for all); `transfer/<init>/finetune` fine-tunes the "
                  "whole model on all N labels for a fixed schedule and keeps the last epoch (no validation carve, "
                  "no early stopping: the same for every init). Features: `dim` = the long-pretrained DIM encoder, "
                  "`dim-matched` / `dim-standard` = domain-aware / standard negatives pretrained with identical "
                  "(short) settings, `random` = untrained, `composition` = Magpie features of the formula "
                  "(matminer), `dim+composition` = both side by side; other names are given in the settings.", "",
                  "Settings: " + json.dumps({k: config[k] for k in ("budgets", "seeds_small", "seeds_large",
                                                                     "transfer_budgets", "transfer_seeds",
                                                                     "transfer_from_budgets",
                                                                     "pretrain_variants", "encoders",
                                                                     "embedding_files", "transfer_from")
                                             if k in config}), ""]
    if not complete:
        lines += ["**Partial results: the study is still running or was interrupted.**", ""]
    for target in sorted({k[0] for k in summary}):
        budgets = sorted({k[2] for k in summary if k[0] == target})
        methods = sorted({k[1] for k in summary if k[0] == target})
        lines += [f"## {target} ({units.get(target, '?')})", "",
                  "| method | " + " | ".join(f"N={n}" for n in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = [f"{summary[(target, m, n)][0]:.3f} ± {summary[(target, m, n)][1]:.3f} ({summary[(target, m, n)][2]})"
                     if (target, m, n) in summary else "–" for n in budgets]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "| N | fine-tuned from DIM vs random (MAE change) | best DIM-based method | Magpie + RF | "
                  "best DIM-based vs Magpie |", "|---|---|---|---|---|"]
        for n in budgets:
            dim, rnd = summary.get((target, "transfer/dim/finetune", n)), summary.get((target, "transfer/random/finetune", n))
            magpie = summary.get((target, "repr/composition/rf", n))
            best = best_dim(summary, target, n)
            change = f"{100 * (dim[0] / rnd[0] - 1):+.1f}%" if dim and rnd else "–"
            versus = f"{100 * (best[1] / magpie[0] - 1):+.1f}%" if best and magpie else "–"
            lines.append(f"| {n} | {change} | {f'{best[0]} {best[1]:.3f}' if best else '–'} | "
                         f"{f'{magpie[0]:.3f}' if magpie else '–'} | {versus} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path, *, units: dict[str, str] | None = None, title: str = "") -> None:
    """MAE vs N (log x), one panel per target: fine-tuning from each init (solid), and frozen features with a
    random forest (dotted: Magpie composition, DIM, DIM + composition, and any other embedding). Every regressor
    is in the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = units or UNITS
    targets = sorted({k[0] for k in summary})
    if not targets:
        return
    fig, axes = plt.subplots(1, len(targets), figsize=(8.5 * len(targets), 4.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        methods = sorted({k[1] for k in summary if k[0] == target})
        shown = [m for m in methods if m.startswith("transfer/")] + \
                [m for m in methods if m.startswith("repr/") and m.endswith("/rf")
                 and m.split("/")[1] not in ("dim-standard", "dim-matched", "random")]
        for k, method in enumerate(shown):
            pts = sorted((key[2], v) for key, v in summary.items() if key[0] == target and key[1] == method)
            label = method.replace("transfer/", "fine-tuned from ").replace("/finetune", "").replace("repr/", "")
            label = label.replace("/rf", " + RF").replace("composition", "Magpie")
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts], yerr=[p[1][1] for p in pts], marker="o", ms=3,
                        capsize=2, lw=1.4, label=label, color=f"C{k % 10}",
                        ls="-" if method.startswith("transfer/") else ":")
        ax.set_xscale("log")
        ax.set_xlabel("labelled training crystals N")
        ax.set_ylabel(f"held-out MAE ({units.get(target, '?')})")
        ax.set_title(f"{title + ': ' if title else ''}{target}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the panel: no line hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
