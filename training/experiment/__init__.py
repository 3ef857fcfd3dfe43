"""Hyperparameter sweeps: ``recsys experiment run experiments/configs/sweep_<name>.toml``.

An optuna study searches over models and their params (the interaction weighting included); each
trial is an MLflow run nested under the sweep's parent run. Trials are tuned on *validation
windows* — each trains before its ``cutoff`` and scores ``[cutoff, end)``, and must end where the
test window starts, so the sweep never reads the test window. With several windows (an array of
``[[validation]]`` tables: the rolling-origin protocol of :mod:`training.windows`) a trial is
fitted on each and its value is the mean over them. The best config is written as a
TOML that ``recsys train --config`` accepts unchanged (its ``[data]`` is the sweep's test window),
and is then fitted and reported once on that test window.

Trials are cheap by construction:

* each window's validation split (and, when the metric needs it, the next-basket data cut at the
  window's end) is loaded once and shared by every trial;
* only the protocol the metric belongs to is evaluated (picks, audiences or next-basket), plus
  any listed in ``[sweep] extra_protocols``;
* hopeless trials stop early: the metric is first computed on a fixed subsample of the first
  window's members (of products, for audience metrics) and handed to the pruner; ALS and BPR also report
  it every ``prune_every_iterations`` iterations while they fit;
* seeds are fixed (sampler, subsample, and the models' ``seed`` param).

The search space, per model, in the sweep TOML::

    [models.als]
    seed = 0                                                       # fixed
    factors = { type = "int", low = 16, high = 128, log = true }   # searched
    weighting = { choices = ["count", "bm25", "recency"] }
    bm25_k1 = { type = "float", low = 1, high = 200, log = true, when = { weighting = "bm25" } }

    [models.top_frequency]
    recency_half_life_days = { type = "float", low = 3, high = 180, log = true, optional = true }

``when`` samples a param only when earlier params (or their defaults) have the given value (a
list means "one of"); ``optional`` also tries leaving it ``None``. With more than one model the
model itself is the first choice of every trial.

The package, one idea per module: :mod:`~training.experiment.config` (the sweep TOML and its
search space), :mod:`~training.experiment.trials` (fitting and scoring one trial),
:mod:`~training.experiment.pruning` (stopping hopeless trials), :mod:`~training.experiment.bookkeeping`
(recording trials: MLflow runs, repeats, the best per model, plots), :mod:`~training.experiment.sweep`
(the study, end to end) and :mod:`~training.experiment.toml_writer` (the best config as TOML).
"""
