"""The sweep: the optuna study over the models' search spaces, each trial a nested MLflow run,
the best config written as a train config and fitted once on the test window."""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

from recsys.errors import RecsysError
from training.config import TrainConfig
from training.experiment.bookkeeping import (
    best_so_far,
    close_figure,
    evaluated_trials,
    jsonable,
    log_trial,
    per_model_best,
    print_trial,
    same_trial,
    stop_after,
    sweep_plots,
    trial_rows,
)
from training.experiment.config import ModelSpace, SweepConfig
from training.experiment.pruning import make_pruner
from training.experiment.toml_writer import write_train_config
from training.experiment.trials import TrialOutcome
from training.experiment.windows import WindowsRunner


@dataclass
class SweepResult:
    name: str
    metric: str
    best_value: float
    best_model: str
    best_params: dict[str, Any]
    best_trial: int
    best_config: Path
    counts: dict[str, int]
    wall_s: float
    run_id: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    validation_window: tuple[date, date] | None = None  # the first (or only) validation window
    validation_windows: list[tuple[date, date]] = field(default_factory=list)


def _sampler(cfg: SweepConfig) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=cfg.sweep.seed, n_startup_trials=cfg.sweep.startup_trials,
                                          multivariate=True, group=True)


def run_sweep(
    cfg: SweepConfig,
    config_path: Path | None = None,
    tracking_uri: str | None = None,
    console: Console | None = None,
    best_out: Path | None = None,
) -> SweepResult:
    """Run the study, log every trial as a nested MLflow run, write the best config, and fit it
    once on the test window."""
    from training.tracking import Tracker

    console = console or Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spaces = cfg.spaces()
    names = list(spaces)
    metric = cfg.sweep.metric
    maximize = cfg.sweep.direction == "maximize"
    best_path = best_out or cfg.best_config_path
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            Tracker(cfg.experiment, run_name=f"sweep-{cfg.sweep.name}", tracking_uri=tracking_uri) as parent:
        parent.set_tags({"recsys.sweep": "true", "sweep.name": cfg.sweep.name, "sweep.metric": metric})
        parent.log_params({"sweep": cfg.sweep, "pruner": cfg.pruner,
                           "validation": {"cutoff": cfg.window().cutoff, "end": cfg.window().end,
                                          "windows": cfg.describe_windows()},
                           "data": cfg.data, "evaluation": cfg.evaluation})
        parent.log_dict(jsonable(cfg.models), "search_space.json")
        if config_path is not None:
            parent.log_file(config_path)
        runner = WindowsRunner(cfg, Path(tmp), console)
        parent.log_metrics({"load_s": runner.load_s})
        mean = "the mean over the validation windows" if len(cfg.validation) > 1 else "the validation window"
        console.print(f"sweep [bold]{cfg.sweep.name}[/]: {metric} ({cfg.sweep.direction}) on {mean} "
                      f"{cfg.describe_windows()}; models {', '.join(names)}; "
                      f"{cfg.sweep.n_trials} trials" + (f", at most {cfg.sweep.timeout_minutes:g} min"
                                                         if cfg.sweep.timeout_minutes else ""), highlight=False)
        study = optuna.create_study(direction=cfg.sweep.direction, sampler=_sampler(cfg), pruner=make_pruner(cfg),
                                    study_name=cfg.sweep.name)
        objective = _objective(cfg, spaces, runner, parent, tracking_uri, console)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            n = cfg.sweep.n_trials  # configs that run; repeats the sampler proposes do not count
            study.optimize(objective, n_trials=n * 10, catch=(Exception,), callbacks=[stop_after(n, max(50, n))],
                           timeout=cfg.sweep.timeout_minutes * 60 if cfg.sweep.timeout_minutes else None)
        search_s = time.perf_counter() - t_start
        states = [t.state.name for t in evaluated_trials(study)]
        counts = {"trials": len(states), "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                  "failed": states.count("FAIL"), "repeats": len(study.trials) - len(states)}
        if study.user_attrs.get("exhausted"):
            console.print(f"the sampler kept proposing configs already run: stopped after {len(states)} trials",
                          highlight=False)
        if counts["complete"] == 0:
            failed = [t for t in study.trials if t.state.name == "FAIL"]
            why = failed[0].user_attrs.get("error", "see the log above") if failed else "no trial finished"
            raise RecsysError(f"sweep {cfg.sweep.name}: no trial completed ({counts}); first error: {why}")
        best = study.best_trial
        best_name, best_params = best.user_attrs["model"], best.user_attrs["params"]
        best_cfg = cfg.train_config(best_name, best_params)
        write_train_config(best_cfg, best_path, header=[
            f"Best of sweep {cfg.sweep.name!r} ({config_path or 'config'}): trial #{best.number} ({counts['trials']} trials run), "
            f"{datetime.now().isoformat(timespec='seconds')}",
            f"{metric} = {best.value:.4f} on the validation window{'s (mean)' if len(cfg.validation) > 1 else ''} "
            f"{cfg.describe_windows()} "
            f"(MLflow run {parent.run_id}, experiment {cfg.experiment!r})",
            f"Reported on the test window {cfg.data.cutoff} .. {cfg.data.test_end}: `recsys train --config {best_path}`",
        ])
        parent.log_file(best_path, artifact_path="best_config")
        per_model = per_model_best(study, maximize)
        for model_name, entry in per_model.items():  # the best of each model too, e.g. a tuned ALS
            if entry["params"] is not None:
                write_train_config(cfg.train_config(model_name, entry["params"]), Path(tmp) / f"best_{model_name}.toml",
                                   header=[f"Best {model_name} of sweep {cfg.sweep.name!r}: trial {entry['trial']}, "
                                           f"{metric} = {entry['value']:.4f} on the validation window"])
                parent.log_file(Path(tmp) / f"best_{model_name}.toml", artifact_path="best_config_per_model")
        trials = trial_rows(study)
        parent.log_dict(jsonable(trials), "trials.json")
        parent.log_dict(jsonable(per_model), "best_per_model.json")
        for name, fig in sweep_plots(trials, metric, maximize).items():
            parent.log_figure(fig, f"plots/{name}.png")
            close_figure(fig)
        parent.log_metrics({"best_value": best.value, "search_s": search_s, "n_trials": counts["trials"],
                            "n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"],
                            "n_repeats_skipped": counts["repeats"]})
        parent.set_tags({"best.model": best_name, "best.trial": best.number, "best.config": str(best_path)})
        test_metrics: dict[str, float] = {}
        if cfg.sweep.evaluate_on_test:
            test_metrics = _report_on_test(cfg, best_cfg, parent, tracking_uri, console)
        wall_s = time.perf_counter() - t_start
        parent.log_metrics({"wall_s": wall_s})
        return SweepResult(cfg.sweep.name, metric, float(best.value), best_name, best_params, best.number, best_path,
                           counts, wall_s, parent.run_id, test_metrics, per_model, trials,
                           (cfg.window().cutoff, cfg.window().end),
                           [(v.cutoff, v.end) for v in cfg.validation])


def _objective(cfg: SweepConfig, spaces: dict[str, ModelSpace], runner: WindowsRunner, parent: Any,
               tracking_uri: str | None, console: Console) -> Callable[[Any], float]:
    from training.tracking import Tracker

    names = list(spaces)
    metric = cfg.sweep.metric
    maximize = cfg.sweep.direction == "maximize"

    repeats = [0]  # repeated proposals since the last printed trial

    def objective(trial: Any) -> float:
        name = trial.suggest_categorical("model", names) if len(names) > 1 else names[0]
        params = spaces[name].sample(trial)
        trial.set_user_attr("model", name)
        trial.set_user_attr("params", params)
        same = same_trial(trial, name, params)
        if same is not None:
            # the sampler proposed a config already scored (TPE does, around a categorical best):
            # tell it the same outcome without fitting; it is not a trial and gets no MLflow run
            trial.set_user_attr("duplicate_of", same.number)
            repeats[0] += 1
            if same.state.name == "PRUNED":
                raise optuna.TrialPruned()
            return float(same.value)
        out = TrialOutcome(name, params)
        state, t0 = "COMPLETE", time.perf_counter()
        tags: dict[str, Any] = {"optuna.trial": trial.number, "sweep.name": cfg.sweep.name, "model": name,
                                "sweep.parent_run": parent.run_id}
        with Tracker(cfg.experiment, run_name=f"{cfg.sweep.name}-{trial.number:03d}-{name}",
                     tracking_uri=tracking_uri, nested=True) as run:
            try:
                runner.run(trial, name, params, out)
            except optuna.TrialPruned:
                state = "PRUNED"
            except Exception as exc:
                state = "FAIL"
                tags["error"] = f"{type(exc).__name__}: {exc}"
                trial.set_user_attr("error", tags["error"])
                print_trial(console, trial.number, name, state, out, metric, time.perf_counter() - t0, best_so_far(trial),
                             repeats[0])
                repeats[0] = 0
                raise
            finally:
                out.timings["trial_s"] = time.perf_counter() - t0
                curves = {f"intermediate_{metric}": out.intermediate,
                          "train_loss": [(int(c["iteration"]), c["loss"]) for c in out.curve],
                          "train_seconds": [(int(c["iteration"]), c["seconds"]) for c in out.curve]}
                log_trial(run, {"model": {"name": name, "params": params}, "trial": trial.number},
                           {**out.metrics, **out.timings}, curves, {**tags, "optuna.state": state})
        trial.set_user_attr("timings", {k: round(v, 3) for k, v in out.timings.items()})
        trial.set_user_attr("intermediate", out.intermediate)
        print_trial(console, trial.number, name, state, out, metric, out.timings["trial_s"],
                     best_so_far(trial, out.value if state == "COMPLETE" else None, maximize), repeats[0])
        repeats[0] = 0
        if state == "PRUNED":
            raise optuna.TrialPruned()
        trial.set_user_attr("metrics", {k: float(v) for k, v in out.metrics.items()})
        assert out.value is not None
        return out.value

    return objective


def _report_on_test(cfg: SweepConfig, best_cfg: TrainConfig, parent: Any, tracking_uri: str | None,
                    console: Console) -> dict[str, float]:
    """Fit the best config once on the test window (``fit_and_evaluate``, as ``recsys train``
    would, minus the registry) and log it as its own nested run."""
    from training.pipeline import fit_and_evaluate
    from training.tracking import Tracker

    test_cfg = best_cfg.model_copy(deep=True)
    test_cfg.evaluation.next_basket = "next_basket" in cfg.protocols()
    with Tracker(cfg.experiment, run_name=f"{cfg.sweep.name}-best-on-test", tracking_uri=tracking_uri,
                 nested=True) as run:
        run.set_tags({"sweep.name": cfg.sweep.name, "sweep.parent_run": parent.run_id, "window": "test"})
        run.log_params({"config": test_cfg.model_dump(mode="json")})
        result = fit_and_evaluate(test_cfg, console)
        run.log_metrics({**result.metrics, **result.timings})
    parent.log_metrics({f"test_{k}": v for k, v in result.metrics.items()})
    return {**result.metrics, **{f"time_{k}": v for k, v in result.timings.items()}}


def sweep_summary(result: SweepResult, cfg: SweepConfig) -> list[Any]:
    """What the console shows at the end: the best trial per model (and its params), then the
    best config on the validation and on the test window."""
    from rich.text import Text

    metric = result.metric
    per = Table(title=f"sweep {result.name}: best trial per model (validation {metric})")
    for col in ("model", "trials", "pruned", f"best {metric}", "trial"):
        per.add_column(col, justify="left" if col == "model" else "right")
    order = sorted(result.per_model.items(), key=lambda kv: -(kv[1]["value"] or -1e9))
    lines = []
    for name, e in order:
        value = "—" if e["value"] is None else f"{e['value']:.4f}"
        per.add_row(name, str(e.get("n_trials", 0)), str(e.get("n_pruned", 0)), value,
                    "—" if e["trial"] is None else f"#{e['trial']}")
        if e["params"] is not None:
            params = ", ".join(f"{k}={_short(v)}" for k, v in e["params"].items() if k not in ("seed", "num_threads"))
            lines.append(f"  {name} #{e['trial']}: {params or 'defaults'}")
    best = Table(title=f"best: {result.best_model} (trial #{result.best_trial}) -> {result.best_config}")
    best.add_column("metric")
    label = "validation mean" if len(cfg.validation) > 1 else f"validation {cfg.window().cutoff}..{cfg.window().end}"
    best.add_column(label, justify="right")
    best.add_column(f"test {cfg.data.cutoff}..{cfg.data.test_end}", justify="right")
    trial = next((t for t in result.trials if t["number"] == result.best_trial), {})
    val_metrics = trial.get("metrics") or {}
    names = {"audience_known_recall@1000": "audience R@1000 known", "audience_new_recall@1000": "audience R@1000 new",
             "repeat_recall@10": "repeat recall@10", "new_recall@10": "new recall@10"}
    keys = [metric, *(k for k in ("recall@10", "ndcg@10", "recall@20", "map@10", "hit_rate@10",
                                  "repeat_recall@10", "new_recall@10", "coverage@10",
                                  "audience_known_recall@1000", "audience_new_recall@1000",
                                  "nbr_recall@10", "nbr_ndcg@10") if k != metric)]
    for k in keys:
        if k in val_metrics or k in result.test_metrics:
            v, t = val_metrics.get(k), result.test_metrics.get(k)
            best.add_row(names.get(k, k), "—" if v is None else f"{v:.4f}", "—" if t is None else f"{t:.4f}")
    c = result.counts
    best.add_row("trials: complete / pruned / failed", f"{c['complete']} / {c['pruned']} / {c['failed']}", "")
    best.add_row("repeated proposals (skipped)", str(c["repeats"]), "")
    best.add_row("sweep wall time", f"{result.wall_s / 60:.1f} min", "")
    return [per, Text("\n".join(lines)), best]


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)
