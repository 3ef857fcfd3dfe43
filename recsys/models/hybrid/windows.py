"""The hybrid's label windows: the last stretch of the training history hidden, features computed on
what came before it, and what members bought in it the labels. Windows that overlap a configured
holiday are skipped: a holiday rush teaches the model a popularity that does not last."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import scipy.sparse as sp

from recsys.interactions import Interactions
from recsys.models.hybrid.params import HybridParams


def label_windows(x: Interactions, p: HybridParams) -> list[tuple[Interactions, sp.csr_matrix]]:
    """(history, labels) pairs carved out of the training occasions, newest usable first."""
    out: list[tuple[Interactions, sp.csr_matrix]] = []
    if p.label_mode == "last_basket":
        last = x.member_last_age()
        is_label = x.age_days == last[x.member]
        shift = last[x.member]
        out.append(_carve(x, is_label, shift, x.as_of))
        return out
    holidays = [h for h in p.holidays]
    offset = 0
    max_age = int(x.age_days.max(initial=0))
    # a history no longer than one window (one month of data and 31-day windows) learns from a
    # window of half the history rather than from none
    days = p.label_days if p.label_days < max_age else max(max_age // 2, 1)
    while len(out) < p.label_windows and (offset + 1) * days < max_age:
        lo, hi = offset * days, (offset + 1) * days  # ages in (lo, hi]
        start, end = x.as_of - timedelta(days=hi), x.as_of - timedelta(days=lo)
        offset += 1
        margin = timedelta(days=p.holiday_margin_days)
        if any(start - margin < h < end + margin for h in holidays):
            continue
        is_label = (x.age_days > lo) & (x.age_days <= hi)
        out.append(_carve(x, is_label, np.full(len(x.age_days), hi), start, before=x.age_days > hi))
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

