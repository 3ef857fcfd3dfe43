"""The hybrid model itself: fitting (label windows -> ranker and audience models, side by side with
the final feature state), scoring through the contract's hooks, and saving / loading."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.errors import InputError, RecsysError
from recsys.models.base import Capability, ProductDescription, Recommender, Tag, TrainData
from recsys.models.hybrid.audiences import (
    AudienceExamples,
    ProductSide,
    audience_examples,
    audience_scores,
    fit_audience,
)
from recsys.models.hybrid.params import HybridParams
from recsys.models.hybrid.ranker import (
    PAIR_FEATURES,
    BoosterClassifier,
    fit_ranker,
    ranker_examples,
    score_candidates,
)
from recsys.models.hybrid.state import (
    build_state,
    id_prefix_codes,
    id_prefix_tag,
    state_arrays,
    state_from_arrays,
)
from recsys.models.hybrid.windows import carve_window, window_bounds
from recsys.tags import price_band_of

NEG_INF = np.float32(-np.inf)
# candidate pairs from which the batch jobs compile the ranker (see bulk_scoring)
COMPILE_MIN_PAIRS = 20_000_000


class Hybrid(Recommender):
    """The default model for both directions (see :mod:`recsys.models.hybrid`)."""

    name = "hybrid"
    Params = HybridParams
    # 2: price-band and recent-category audience features; 3: product-level audience terms;
    # 4: product-line and brand / category kNN audience features; 5: the member's price band within
    # a category (members x (category, band) table, an audience feature); 6: the labels of the
    # product attributes and the categories' price-band thresholds (products described by attributes);
    # 7: the member's recency-weighted purchases (log_member_recent, an audience feature)
    state_version = 7
    capabilities = frozenset({Capability.PROBABILITIES, Capability.ITEM_VECTORS, Capability.PURCHASE_AGES,
                              Capability.PURCHASE_COUNTS, Capability.ATTRIBUTE_AUDIENCE})

    def _tags(self, data: TrainData) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Category, brand and product-line codes of every product (brand and line: ``None`` when
        unknown). Keeps the labels behind the codes (and the categories' price-band thresholds),
        which place a product described by attributes (:meth:`attribute_member_scores`)."""
        cat = data.product_tags.get("category")
        brand = data.product_tags.get("brand")
        band = data.product_tags.get("price_band")
        item_cat = cat.codes if cat is not None else np.zeros(data.n_products, np.int32)
        item_brand = brand.codes if brand is not None and (brand.codes >= 0).any() else None
        brand_labels = brand.labels if item_brand is not None and brand is not None else ()
        ids = data.interactions.products.external_ids.astype(str)
        if item_brand is None and self.params.brand_from_id_prefix:
            prefix = id_prefix_tag(ids, self.params.brand_from_id_prefix)
            item_brand, brand_labels = prefix.codes, prefix.labels
        item_line = id_prefix_codes(ids, self.params.line_from_id_prefix) if self.params.line_from_id_prefix else None
        self.attribute_labels = {
            "category": list(cat.labels) if cat is not None else None,
            "price_band": list(band.labels) if band is not None else None,
            "brand": list(brand_labels),  # from the id prefix: the prefixes
        }
        self.price_bands = {c: [float(lo), float(hi)] for c, (lo, hi) in (data.category_price_bands or {}).items()}
        return item_cat, item_brand, item_line

    def _fit(self, data: TrainData) -> None:
        p = self.params
        item_cat, item_brand, item_line = self._tags(data)
        rng = np.random.default_rng(p.seed)
        # the audience samples draw from their own stream: a change to the picks candidates
        # (how many negatives they draw) must not reshuffle the audience model's examples
        audience_rng = np.random.default_rng([p.seed, 1])
        keep_cols = [j for j, f in enumerate(PAIR_FEATURES) if f not in set(p.drop_features)]
        X_parts, y_parts, examples = [], [], []
        ranker_bounds = window_bounds(data.interactions, p)
        audience_bounds = window_bounds(data.interactions, p, audiences=True) if p.audiences else []
        if not ranker_bounds or (p.audiences and not audience_bounds):
            raise ValueError("not enough history for a label window; lower label_days (audience_label_days) "
                             "or add data")
        # The final state (everything before the cut-off) depends on nothing learnt here, and the
        # ranker and the audience models on nothing of each other: they run side by side (each is
        # deterministic on its own, so the model is the same as one built in sequence). BLAS stays
        # at one thread for the whole fit, so no worker's limit can lapse inside another's. A
        # window both use is carved and its state built once.
        with threadpool_limits(1, "blas"), ThreadPoolExecutor(2) as pool:
            lightgbm = pool.submit(importlib.import_module, "lightgbm")
            final = pool.submit(build_state, data.interactions, p, item_cat, item_brand, data.product_tags, item_line)
            for bounds in dict.fromkeys(ranker_bounds + audience_bounds):
                history, labels = carve_window(data.interactions, bounds)
                s = build_state(history, p, item_cat, item_brand, data.product_tags, item_line)
                if bounds in ranker_bounds:
                    X_w, y_w = ranker_examples(s, labels, rng, p, keep_cols)
                    X_parts.append(X_w)
                    y_parts.append(y_w)
                if bounds in audience_bounds:
                    examples.append(audience_examples(s, labels, audience_rng, p, window=audience_bounds.index(bounds)))
            ex = AudienceExamples.concat(examples) if p.audiences else None
            self.audience_w = self.audience_g = self.audience_b = None  # set from fit_audience
            audiences = pool.submit(fit_audience, ex, p) if ex is not None else None
            X, y = np.vstack(X_parts), np.concatenate(y_parts)
            self.ranker = fit_ranker(lightgbm.result(), X, y, p)
            self.keep_cols = np.asarray(keep_cols, dtype=np.int64)
            self.training_summary = {
                "label_windows": len(ranker_bounds), "audience_label_windows": len(audience_bounds),
                "ranker_rows": int(len(y)), "ranker_positive_rate": float(y.mean()),
            }
            if audiences is not None and ex is not None:
                self.audience_w, self.audience_g, self.audience_b = audiences.result()
                self.training_summary.update({
                    "audience_rows_sold": int((~ex.cold).sum()), "audience_rows_never_sold": int(ex.cold.sum()),
                })
            self.state = final.result()

    def bulk_scoring(self, members: int) -> contextlib.AbstractContextManager[None]:
        # compiling the ranker takes a few seconds: worth it from ~20M candidate pairs (~100 s of
        # LightGBM's own scoring at ~200k pairs/s on one thread)
        pairs = members * (self.params.candidates_popular + self.params.candidates_cf)
        if pairs < COMPILE_MIN_PAIRS:
            return contextlib.nullcontext()
        return self.ranker.compiled()

    # -- picks
    def _score_candidates(self, members: np.ndarray) -> sp.csr_matrix:
        return score_candidates(self.state, self.ranker, self.keep_cols, members, self.params)

    def _score_items(self, members: np.ndarray) -> np.ndarray:
        cand = self._score_candidates(members).tocoo()
        out = np.full(cand.shape, NEG_INF, dtype=np.float32)
        out[cand.row, cand.col] = cand.data
        return out

    # -- audiences
    def _require_audiences(self) -> None:
        if self.audience_w is None:
            raise RecsysError("this hybrid model was fitted with audiences = false: it ranks products for "
                              "members only; train it with audiences = true to build audiences")

    def _score_members(self, products: np.ndarray) -> np.ndarray:
        """Audience logits ``(len(products), n_members)`` (:func:`~recsys.models.hybrid.audiences.audience_scores`)."""
        self._require_audiences()
        return audience_scores(self.state, products, self.audience_w, self.audience_g, self.audience_b)

    def attribute_audience(
        self, products: np.ndarray, n: int = 1000, *, member_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Never-sold products scored from category, price band and brand alone: the never-sold
        model without the product-line term (a product line is known only from a catalogue id)."""
        self._require_audiences()
        return self._top_members(
            lambda p: audience_scores(self.state, p, self.audience_w, self.audience_g, self.audience_b, with_line=False),
            products, n, member_mask)

    def attribute_member_scores(self, products: Sequence[ProductDescription]) -> np.ndarray:
        """Products described by attributes, scored by the never-sold model exactly as
        :meth:`attribute_audience` scores a never-sold row: category code, the price band the
        features build would give the price in that category (:func:`recsys.tags.price_band_of`
        against the thresholds the model was trained with), brand code, the ALS vector of a
        never-sold product of that category and band, no sales, no product line."""
        self._require_audiences()
        cat, band, brand = self.attribute_codes(products)
        keys = tuple(k for k in ("category", "price_band") if self.attribute_labels.get(k) is not None)
        side = ProductSide.of_attributes(self.state, cat, band, brand, keys)
        return audience_scores(self.state, side, self.audience_w, self.audience_g, self.audience_b)

    def read_attributes(self, products: Sequence[ProductDescription]) -> list[dict[str, str | None]]:
        cat, band, brand = self.attribute_codes(products)
        labels = self.attribute_labels

        def label(kind: str, code: int) -> str | None:
            known = labels.get(kind) or []
            return str(known[code]) if 0 <= code < len(known) else None

        return [{"category": p.category, "price_band": label("price_band", int(b)), "brand": label("brand", int(r))}
                for p, b, r in zip(products, band, brand, strict=True)]

    def attribute_codes(self, products: Sequence[ProductDescription]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Category, price-band and brand codes of described products (-1: unknown band or
        brand); an unknown category is an :class:`InputError` naming the known ones."""
        labels = self.attribute_labels
        cats = Tag(np.zeros(0, np.int32), tuple(labels.get("category") or ()))
        bands = Tag(np.zeros(0, np.int32), tuple(labels.get("price_band") or ()))
        brands = Tag(np.zeros(0, np.int32), tuple(labels.get("brand") or ()))
        out = np.full((3, len(products)), -1, dtype=np.int64)
        for j, p in enumerate(products):
            c = cats.code(p.category) if labels.get("category") is not None else 0
            if c < 0:
                known = sorted(cats.labels)
                shown = ", ".join(known[:30]) + (f", ... ({len(known)} in all)" if len(known) > 30 else "")
                raise InputError(f"unknown category {p.category!r}; categories: {shown}")
            lo, hi = self.price_bands.get(p.category, (None, None))
            out[0, j] = c
            out[1, j] = bands.code(price_band_of(p.price, lo, hi))
            out[2, j] = brands.code(p.brand) if p.brand is not None else -1
        return out[0], out[1], out[2]

    def purchase_probability(self, scores: np.ndarray) -> np.ndarray:
        """Audience scores (logits) -> calibrated purchase probabilities in a label window."""
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))

    def item_vectors(self) -> np.ndarray:
        """The ALS product vectors (never-sold products: from their attributes)."""
        return self.state.item_factors

    def purchase_ages(self) -> sp.csr_matrix:
        return self.state.last_age

    def purchase_counts(self) -> sp.csr_matrix:
        return self.state.counts

    # -- persistence
    def _state(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ranker": self.ranker.booster_.model_to_string(),
            "keep_cols": self.keep_cols, "audience_w": self.audience_w, "audience_g": self.audience_g,
            "audience_b": self.audience_b, "training_summary": self.training_summary,
            "attribute_labels": self.attribute_labels, "price_bands": self.price_bands,
        }
        out.update({f"s_{k}": v for k, v in state_arrays(self.state).items()})
        return out

    def _set_state(self, st: dict[str, Any]) -> None:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=st["ranker"])
        self.ranker = BoosterClassifier(booster)
        self.keep_cols = st["keep_cols"]
        self.audience_w, self.audience_g, self.audience_b = st["audience_w"], st["audience_g"], st["audience_b"]
        self.training_summary = st.get("training_summary", {})
        self.attribute_labels, self.price_bands = st["attribute_labels"], st["price_bands"]
        self.state = state_from_arrays({k[2:]: v for k, v in st.items() if k.startswith("s_")})
