"""The hybrid's label windows: the last stretch of the training history hidden, features computed on
what came before it, and what members bought in it the labels. Windows that overlap a configured
holiday are skipped: a holiday rush teaches the model a popularity that does not last."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import scipy.sparse as sp

from recsys.interactions import Interactions
from recsys.models.hybrid.params import HybridParams

LAST_BASKET = (-1, -1)  # the bounds of "each member's last basket" (label_mode = "last_basket")


def carve_window(x: Interactions, bounds: tuple[int, int]) -> tuple[Interactions, sp.csr_matrix]:
    """(history, labels) of one label window of :func:`window_bounds`: what members bought at label
    ages ``(lo, hi]`` the labels, what came before the history, aged as of the window's start;
    ``(-1, -1)``: each member's last basket, the history aged as of it."""
    if bounds == LAST_BASKET:
        last = x.member_last_age()
        return _carve(x, x.age_days == last[x.member], last[x.member], x.as_of)
    lo, hi = bounds
    is_label = (x.age_days > lo) & (x.age_days <= hi)
    return _carve(x, is_label, np.full(len(x.age_days), hi), x.as_of - timedelta(days=hi), before=x.age_days > hi)


def window_bounds(x: Interactions, p: HybridParams, *, audiences: bool = False) -> list[tuple[int, int]]:
    """The label windows' age bounds ``(lo, hi]``, newest first: the picks ranker's
    (``label_days`` x ``label_windows``) or, with ``audiences``, the audience models'
    (``audience_label_days`` x ``audience_label_windows``, each defaulting to the ranker's).
    Windows within ``holiday_margin_days`` of a configured holiday are skipped."""
    if p.label_mode == "last_basket":
        return [LAST_BASKET]
    want = (p.audience_label_days or p.label_days) if audiences else p.label_days
    count = (p.audience_label_windows or p.label_windows) if audiences else p.label_windows
    out: list[tuple[int, int]] = []
    offset = 0
    max_age = int(x.age_days.max(initial=0))
    # a history no longer than one window (one month of data and 31-day windows) learns from a
    # window of half the history rather than from none
    days = want if want < max_age else max(max_age // 2, 1)
    margin = timedelta(days=p.holiday_margin_days)
    while len(out) < count and (offset + 1) * days < max_age:
        lo, hi = offset * days, (offset + 1) * days  # ages in (lo, hi]
        start, end = x.as_of - timedelta(days=hi), x.as_of - timedelta(days=lo)
        offset += 1
        if any(start - margin < h < end + margin for h in p.holidays):
            continue
        out.append((lo, hi))
    return out


def _carve(
    x: Interactions, is_label: np.ndarray, shift: np.ndarray, as_of: date, before: np.ndarray | None = None
) -> tuple[Interactions, sp.csr_matrix]:
    hist = ~is_label if before is None else before
    history = Interactions(
        x.members, x.products, x.member[hist], x.product[hist], (x.age_days[hist] - shift[hist]).astype(np.int32),
        x.quantity[hist], x.amount[hist], as_of,
    )
    labels = sp.csr_matrix(
        (np.ones(int(is_label.sum()), np.float32), (x.member[is_label], x.product[is_label])), shape=x.shape
    )
    labels.data[:] = 1.0
    return history, labels

