"""The hybrid model's hyperparameters."""

from __future__ import annotations

from datetime import date
from typing import Literal

from recsys.models.base import ModelParams


class HybridParams(ModelParams):
    # collaborative filtering (implicit ALS on BM25-weighted purchase-day counts)
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    knn_neighbours: int = 100
    # Without a brand column, a product id that is a retail barcode (EAN-13 / GS1) still names its
    # maker in its first digits: group products by that prefix as a stand-in for brand. (Better at
    # ingest, the mapping's ``brand_from_id_prefix``: the brand is then a tag every part sees.)
    brand_from_id_prefix: int | None = None
    # ... and a longer prefix names a product line (one maker's sizes and flavours of a product): a
    # never-sold product is often a new variant of a line that sold
    line_from_id_prefix: int | None = None
    # candidates for picks
    candidates_popular: int = 60
    candidates_cf: int = 40
    # above this many products the ALS candidates come from an inverted-file index (nprobe
    # calibrated to recall 0.96 of the exact top candidates_cf) instead of an exact scan of every
    # product (state.cf_candidate_index): the exact scan grows with members x products
    cf_exact_max_products: int = 50_000
    # label windows
    label_mode: Literal["days", "last_basket"] = "days"
    label_days: int = 31
    label_windows: int = 1  # how many windows (newest usable first) to learn from
    # the audience models' own label windows (None: the ranker's): picks and audiences are chosen
    # on the validation windows separately (the picks sweep; experiments/launch_audiences.py), and
    # what suits the ranker need not suit them
    audience_label_days: int | None = None
    audience_label_windows: int | None = None
    holidays: list[date] = []
    holiday_margin_days: int = 14
    # the picks ranker (LightGBM)
    n_estimators: int = 150
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 100
    negative_rate: float = 0.25
    # the ranker learns from the candidates of at most this many members per label window (a
    # random sample of those who bought in it; None: all): a million members' candidates are
    # ~30M rows, where a few million already fix a tree ensemble of this size
    ranker_max_members: int | None = 200_000
    drop_features: list[str] = ["buyers_rate", "occasions_rate", "recent_pop"]
    # the audience models (logistic regression); off where only picks are evaluated (the
    # next-basket protocol): the model then ranks products for members, not members for products
    audiences: bool = True
    audience_negatives: int = 20
    # the ranking fits weigh each example by 1 / (its product's buyers in the window) ** this: 0,
    # every buyer alike (products with many buyers dominate); 1, every product alike, as the
    # evaluation averages recall over products. Chosen on the validation windows
    # (experiments/launch_audiences.py, lift over the most-active members, validation mean
    # sold / never-sold / by attributes, seeds 0 / 1 / 2), with log_member_recent in the sold
    # model: 0 and without it 1.385 / 1.114 / 1.112, 1.379 / 1.104 / 1.100, 1.385 / 1.103 / 1.099;
    # 1 and with it 1.422 / 1.133 / 1.137, 1.431 / 1.122 / 1.122, 1.427 / 1.116 / 1.116 (0.5:
    # 1.416 / 1.129 / 1.129, 1.5: 1.426 / 1.133 / 1.142 at seed 0). The sold model's expected /
    # actual buyers@1000 fall from 0.33 to 0.21 (the never-sold one's rise from 0.44 to 0.60)
    audience_product_weight_power: float = 1.0
    audience_max_products: int = 3000
    audience_l2: float = 1.0
    # a never-sold product has no purchase history to learn from: the never-sold model reads the
    # member's affinity to the product's category, brand, line and price band, and how they shop.
    # Chosen on the validation windows (experiments/launch_audiences.py; lift over the most-active
    # members for never-sold products, December / January): the list before, fitted pooled, 0.66x /
    # 1.04x; fitted within products 0.72x / 1.07x; plus the member's category share, category x
    # activity, days, recency and early-adoption share 1.12x / 1.06x; without the ALS vector ("cf",
    # for a never-sold product an average over its category and band) 1.16x / 1.07x
    cold_audience_features: list[str] = [
        "log_category_count", "log_member_occ", "log_brand_count", "log_early_adoptions", "band_share",
        "log_category_recent", "log_line_count", "log_brand_knn", "log_category_knn", "cat_band_share",
        "category_share", "log_category_x_occ", "log_member_days", "log_member_last_age", "early_adoption_share",
    ]
    # how the never-sold model learns: "within", weights from differences between members of the
    # same product (one intercept per product, as the sold-product model), then only its level;
    # "pooled", one logistic regression over every never-sold product's examples
    cold_audience_fit: Literal["pooled", "within"] = "within"
    # audience features the sold-product model leaves out (it uses every other one)
    # (log_member_recent, the member's recency-weighted purchases, added to the sold model: 1.385 ->
    # 1.401 alone at seed 0; in the never-sold model 1.114 / 1.112 -> 1.106 / 1.109, left out)
    warm_audience_exclude: list[str] = []
    seed: int = 0
    num_threads: int = 0

