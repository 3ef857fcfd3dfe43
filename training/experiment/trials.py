"""One trial: the validation data every trial shares, the fit and the scores of one config, and
the intermediate values it reports to the pruner (on a member subsample, after the fit and, for
ALS / BPR, every few iterations while it fits)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import scipy.sparse as sp
from rich.console import Console

from recsys.models.base import Capability, Recommender
from training.experiment.config import SweepConfig

POST_FIT_STEP = 1000  # the optuna step of the subsample value computed after the fit


@dataclass
class TrialOutcome:
    model: str
    params: dict[str, Any]
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # per-iteration loss / seconds


class TrialRunner:
    """Holds the validation data every trial shares; fits and scores one trial at a time."""

    def __init__(self, cfg: SweepConfig, workdir: Path, console: Console | None = None):
        from training.data import DataPaths, load_split
        from training.next_basket import load_next_basket

        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.protocols = cfg.protocols()
        vcfg = cfg.validation_config()
        self.paths = DataPaths(vcfg.data.canonical, vcfg.data.features)
        self.window = (cfg.window().cutoff, cfg.window().end)
        rng = np.random.default_rng(cfg.sweep.seed)
        t0 = time.perf_counter()
        self.data = self.split = self.nbr = None
        self.sub_members = self.sub_truth_products = self.sub_nbr = None  # the subsamples scored first
        if {"picks", "audiences"} & set(self.protocols):
            with self.console.status(f"loading the validation split ({self.window[0]} .. {self.window[1]})"):
                self.data, self.split = load_split(self.paths, *self.window)
            self.truth, self.seen = self.split.truth(), self.split.seen()
            n = self.data.n_members
            activity = np.bincount(self.data.interactions.member, minlength=n)
            self.reference = np.lexsort((np.arange(n), -activity))  # most active first, as in training
            members = np.where(np.diff(sp.csr_matrix(self.truth).indptr) > 0)[0]
            self.sub_members = _sample(rng, members, cfg.sweep.subsample)
            products = np.where(np.diff(sp.csc_matrix(self.truth).indptr) > 0)[0]
            keep = _sample(rng, products, cfg.sweep.subsample)
            self.sub_truth_products = None if keep is None else _keep_columns(self.truth, keep)
        if "next_basket" in self.protocols:
            # the protocol's last baskets, taken from purchases before the validation end only
            cut = self.window_transactions(workdir)
            with self.console.status("loading the next-basket data (validation window)"):
                self.nbr = load_next_basket(cut, self.paths.canonical / "products.parquet")
            rows = np.where(np.diff(self.nbr.truth.indptr) > 0)[0]
            keep = _sample(rng, rows, cfg.sweep.subsample)
            self.sub_nbr = None if keep is None else replace(self.nbr, truth=_keep_rows(self.nbr.truth, keep))
        self.load_s = time.perf_counter() - t0

    def window_transactions(self, workdir: Path) -> Path:
        """The canonical transactions before the validation end, as their own Parquet file."""
        import duckdb

        from recsys.columns import Col

        workdir.mkdir(parents=True, exist_ok=True)
        out = workdir / "transactions_before_validation_end.parquet"
        con = duckdb.connect()
        end = datetime.combine(self.window[1], datetime.min.time())
        con.read_parquet(str(self.paths.transactions)).filter(
            f"{Col.TS} < TIMESTAMP '{end.isoformat(sep=' ')}'").write_parquet(str(out))
        return out

    # ------------------------------------------------------------------ one trial
    def run(self, trial: Any, name: str, params: dict[str, Any], out: TrialOutcome) -> float:
        """Fit and score one trial, reporting intermediate values to ``trial`` (raises
        ``optuna.TrialPruned`` when the pruner says stop); fills ``out`` as it goes."""
        from recsys.models import get_model

        cls = get_model(name)
        p = cls.Params(**params)
        metric = self.cfg.sweep.metric
        fitted: dict[str, Any] = {}
        for i, protocol in enumerate(self.protocols):
            primary = i == 0
            kind = "nbr" if protocol == "next_basket" else "temporal"
            if kind not in fitted:
                t0 = time.perf_counter()
                fitted[kind] = self._fit(cls, p, kind, trial if primary and protocol == "picks" else None, out)
                out.timings[f"{kind}_fit_s"] = time.perf_counter() - t0
            model = fitted[kind]
            if primary and self._subsample(protocol) is not None:
                t0 = time.perf_counter()
                value = self._evaluate(protocol, model, subsample=True)[metric]
                out.timings["subsample_evaluate_s"] = time.perf_counter() - t0
                self._report(trial, out, value, POST_FIT_STEP)
            t0 = time.perf_counter()
            out.metrics.update(self._evaluate(protocol, model))
            out.timings[f"{protocol}_evaluate_s"] = time.perf_counter() - t0
            if primary:
                out.value = float(out.metrics[metric])
        out.timings["fit_s"] = sum(v for k, v in out.timings.items() if k.endswith("_fit_s"))
        out.timings["evaluate_s"] = sum(v for k, v in out.timings.items() if k.endswith("evaluate_s"))
        assert out.value is not None
        return out.value

    def _fit(self, cls: Any, params: Any, kind: str, trial: Any, out: TrialOutcome) -> Any:
        from training.pipeline import protocol_params

        if kind == "nbr":
            assert self.nbr is not None
            # as training does: a model with label windows learns from each member's last basket
            return cls(protocol_params(params, last_basket=True, audiences=False)).fit(self.nbr.train)
        model = cls(protocol_params(params, last_basket=False, audiences="audiences" in self.protocols))
        every = self.cfg.sweep.prune_every_iterations
        if trial is not None and every > 0 and self.sub_members is not None:
            self._watch_iterations(model, trial, out, every)
        return model.fit(self.data)

    def _watch_iterations(self, model: Recommender, trial: Any, out: TrialOutcome, every: int) -> None:
        """Models that train in iterations (:attr:`~recsys.models.base.Capability.ITERATIONS`:
        ALS, BPR): score the model as far as it is trained on the member subsample every
        ``every`` iterations and let the pruner stop the fit."""
        if not model.has(Capability.ITERATIONS):
            return
        total = model.planned_iterations()

        def on_iteration(iteration: int, seconds: float, loss: float) -> None:
            out.curve.append({"iteration": iteration, "seconds": seconds, "loss": loss})
            step = iteration + 1
            if step % every or step >= total or step >= POST_FIT_STEP:
                return
            value = self._picks(model.snapshot(), members=self.sub_members)[self.cfg.sweep.metric]
            self._report(trial, out, value, step)

        model.watch_iterations(on_iteration)

    def _report(self, trial: Any, out: TrialOutcome, value: float, step: int) -> None:
        out.intermediate.append((step, float(value)))
        trial.report(float(value), step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.cfg.sweep.metric} {value:.4f})")

    def _subsample(self, protocol: str) -> Any:
        return {"picks": self.sub_members, "audiences": self.sub_truth_products, "next_basket": self.sub_nbr}[protocol]

    def _picks(self, model: Any, members: np.ndarray | None = None) -> dict[str, float]:
        from training.evaluate import evaluate_picks

        return evaluate_picks(model, self.truth, self.seen, ks=tuple(self.cfg.evaluation.ks), members=members)

    def _evaluate(self, protocol: str, model: Any, subsample: bool = False) -> dict[str, float]:
        from training.evaluate import evaluate_audiences
        from training.next_basket import evaluate_next_basket

        ev = self.cfg.evaluation
        if protocol == "picks":
            return self._picks(model, self.sub_members if subsample else None)
        if protocol == "audiences":
            truth = self.sub_truth_products if subsample else self.truth
            return evaluate_audiences(model, truth, self.seen, sizes=tuple(ev.audience_sizes),
                                      min_buyers_known=ev.min_buyers_known, min_buyers_new=ev.min_buyers_new,
                                      reference=self.reference, catalogue=self.data)
        data = self.sub_nbr if subsample else self.nbr
        return {f"nbr_{k}": v for k, v in evaluate_next_basket(model, data, tuple(ev.ks)).items()}


def _sample(rng: np.random.Generator, ids: np.ndarray, share: float) -> np.ndarray | None:
    if not 0 < share < 1 or len(ids) < 2:
        return None
    n = max(1, int(math.ceil(share * len(ids))))
    return np.sort(rng.choice(ids, size=n, replace=False))


def _keep_columns(m: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    mask = np.zeros(m.shape[1], dtype=np.float32)
    mask[cols] = 1.0
    out = sp.csr_matrix(m @ sp.diags(mask))
    out.eliminate_zeros()
    return out


def _keep_rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    mask = np.zeros(m.shape[0], dtype=np.float32)
    mask[rows] = 1.0
    out = sp.csr_matrix(sp.diags(mask) @ m)
    out.eliminate_zeros()
    return out
