"""Trial bookkeeping: repeated proposals, when to stop, each trial's MLflow run, the console line,
the best trial per model, the trial table and the optimisation-history plot."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from training.experiment.trials import POST_FIT_STEP, TrialOutcome


def same_trial(trial: Any, name: str, params: dict[str, Any]) -> Any:
    """The first finished trial (complete or pruned) with exactly these params, if any."""
    for t in trial.study.get_trials(deepcopy=False):
        if (t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs
                and t.user_attrs.get("model") == name and t.user_attrs.get("params") == params):
            return t
    return None


def evaluated_trials(study: Any) -> list[Any]:
    """The trials that ran: finished, and not a repeat of an earlier config."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and "duplicate_of" not in t.user_attrs]


def stop_after(n_trials: int, max_repeats: int) -> Callable[[Any, Any], None]:
    """An optuna callback: stop once ``n_trials`` configs ran, or after ``max_repeats`` repeats
    in a row (the sampler has nothing new to propose)."""
    def callback(study: Any, trial: Any) -> None:
        if len(evaluated_trials(study)) >= n_trials:
            study.stop()
            return
        tail = 0
        for t in reversed(study.get_trials(deepcopy=False)):
            if "duplicate_of" not in t.user_attrs:
                break
            tail += 1
        if tail >= max_repeats:
            study.set_user_attr("exhausted", True)
            study.stop()

    return callback


def log_trial(run: Any, params: dict[str, Any], metrics: dict[str, float],
               curves: dict[str, list[tuple[int, float]]], tags: dict[str, Any]) -> None:
    """Everything of a trial's run in a few batched writes (each write to a sqlite store is a
    commit; one per curve point would cost more than a cheap trial)."""
    from mlflow.entities import Metric, Param, RunTag

    from training.tracking import flatten_params, metric_key

    now = int(time.time() * 1000)
    items = [Metric(metric_key(k), float(v), now, 0) for k, v in metrics.items() if _finite(v)]
    for name, points in curves.items():
        items += [Metric(metric_key(name), float(v), now, int(step)) for step, v in points if _finite(v)]
    ps = [Param(k, v) for k, v in flatten_params(params).items()]
    ts = [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]
    while items or ps or ts:  # MLflow's limits per batch: 1000 metrics, 100 params, 100 tags
        run.client.log_batch(run.run_id, metrics=items[:1000], params=ps[:100], tags=ts[:100])
        items, ps, ts = items[1000:], ps[100:], ts[100:]


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def best_so_far(trial: Any, value: float | None = None, maximize: bool = True) -> tuple[float, int] | None:
    done = [t for t in trial.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    pairs = [(float(t.value), t.number) for t in done]
    if value is not None:
        pairs.append((value, trial.number))
    if not pairs:
        return None
    return max(pairs, key=lambda p: (p[0] if maximize else -p[0], -p[1]))


def print_trial(console: Console, number: int, name: str, state: str, out: TrialOutcome, metric: str,
                 seconds: float, best: tuple[float, int] | None, repeats: int = 0) -> None:
    if state == "COMPLETE":
        what = f"{metric} {out.value:.4f}"
    elif state == "PRUNED":
        step, value = out.intermediate[-1] if out.intermediate else (0, float("nan"))
        where = "after fit" if step == POST_FIT_STEP else f"at iter {step}"
        what = f"pruned {where} ({value:.4f})"
    else:
        what = "failed"
    best_s = f"best {best[0]:.4f} #{best[1]}" if best else ""
    rep = f"  (+{repeats} repeated proposals skipped)" if repeats else ""
    console.print(f"#{number:<3} {name:<14} {what:<30} {seconds:6.1f}s  {best_s}{rep}", highlight=False, markup=False)


def per_model_best(study: Any, maximize: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in study.trials:
        if t.state.name != "COMPLETE" or "duplicate_of" in t.user_attrs:
            continue
        name = t.user_attrs["model"]
        cur = out.get(name)
        if cur is None or (t.value > cur["value"] if maximize else t.value < cur["value"]):
            out[name] = {"value": float(t.value), "trial": t.number, "params": t.user_attrs["params"]}
    for t in study.trials:
        name = t.user_attrs.get("model")
        if name and "duplicate_of" not in t.user_attrs:
            entry = out.setdefault(name, {"value": None, "trial": None, "params": None})
            entry["n_trials"] = entry.get("n_trials", 0) + 1
            entry["n_pruned"] = entry.get("n_pruned", 0) + (t.state.name == "PRUNED")
    return out


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in evaluated_trials(study):
        inter = t.user_attrs.get("intermediate") or []
        rows.append({
            "number": t.number, "state": t.state.name, "model": t.user_attrs.get("model"),
            "value": None if t.value is None else float(t.value),
            "last_intermediate": inter[-1] if inter else None,
            "params": t.user_attrs.get("params"), "timings": t.user_attrs.get("timings"),
            "metrics": t.user_attrs.get("metrics"), "error": t.user_attrs.get("error"),
        })
    return rows


def sweep_plots(trials: list[dict[str, Any]], metric: str, maximize: bool) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    models = sorted({t["model"] for t in trials if t["model"]})
    for i, name in enumerate(models):
        done = [t for t in trials if t["model"] == name and t["state"] == "COMPLETE"]
        pruned = [t for t in trials if t["model"] == name and t["state"] == "PRUNED" and t["last_intermediate"]]
        color = f"C{i}"
        ax.scatter([t["number"] for t in done], [t["value"] for t in done], color=color, label=name, s=18)
        ax.scatter([t["number"] for t in pruned], [t["last_intermediate"][1] for t in pruned], color=color,
                   marker="x", s=18)
    best, xs, ys = None, [], []
    for t in trials:
        if t["state"] == "COMPLETE" and (best is None or (t["value"] > best if maximize else t["value"] < best)):
            best = t["value"]
        if best is not None:
            xs.append(t["number"])
            ys.append(best)
    ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial (x: pruned, at its last intermediate value)")
    ax.set_ylabel(f"{metric} (validation)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return {"optimization_history": fig}


def close_figure(fig: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def jsonable(obj: Any) -> Any:
    """Dates (TOML dates in params) as ISO strings, so MLflow can write the object as JSON."""
    return json.loads(json.dumps(obj, default=str))
