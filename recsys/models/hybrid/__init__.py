"""The default model: repeat behaviour + collaborative filtering + propensity, learned.

Picks (person -> product)
    Candidates per member — everything they bought, the nearest products by ALS, the popular
    ones — are scored by a gradient-boosted classifier over pair features: how often and how
    recently the member bought the product, how repeatable the product is, the ALS affinity, the
    member's affinity to the product's category, item-kNN similarity to their basket, popularity.
    The classifier learns from the model's own training data: the last window before the cut-off
    (a *label window*) is hidden, features are computed on what came before it, and the label is
    whether the member bought the product in the window. Windows that overlap a configured
    holiday are skipped: a holiday rush teaches the model a popularity that does not last.

Audiences (product -> person)
    A logistic model over member features for the product — bought it before, category affinity,
    activity, recency, ALS affinity (from attributes for a never-sold product) — trained on the
    same label windows with sampled negatives and corrected for the sampling, so its scores are
    calibrated purchase probabilities: an audience of N contains sum(p) expected buyers.

The package, one idea per module:

* :mod:`~recsys.models.hybrid.params` — the hyperparameters;
* :mod:`~recsys.models.hybrid.state` — the feature state a history gives (counts, recency, ALS
  factors, item-kNN, group tables) and the sparse look-ups over it;
* :mod:`~recsys.models.hybrid.windows` — the label windows;
* :mod:`~recsys.models.hybrid.ranker` — the picks ranker: candidates, pair features, LightGBM;
* :mod:`~recsys.models.hybrid.audiences` — the audience models and their features;
* :mod:`~recsys.models.hybrid.model` — :class:`Hybrid`, which fits and scores with them.
"""

from recsys.models.hybrid.model import Hybrid
from recsys.models.hybrid.params import HybridParams

__all__ = ["Hybrid", "HybridParams"]
