"""A small synthetic shop served in process, for the campaign tests: ``recsys data synth`` ->
ingest -> features as of the send date (with the shipped rule tags) -> a fast model -> bundle ->
the serving state, all through the project's own functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from features.build import build_features
from features.config import FeatureConfig
from features.rules import load_rules
from recsys.data.ingest import ingest
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize
from recsys.models import get_model
from recsys.tags import TagRegistry
from serving.settings import ServingSettings
from serving.state import ServingState, build_state
from training.config import TrainConfig
from training.data import DataPaths, load_train
from training.pipeline import TrainResult, build_bundle

RULES = Path(__file__).resolve().parent.parent / "features" / "rules.toml"


@dataclass
class World:
    canonical: Path
    bundle: Path
    state: ServingState
    as_of: date


def bundle_without_lists(cfg: TrainConfig, result: TrainResult, out: Path) -> Path:
    """:func:`training.pipeline.build_bundle` without the pre-ranked pick lists (every member's
    top-100, minutes on Ta-Feng): audiences are scored live and are the same either way."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    from recsys.bundle import Bundle, save_bundle
    from recsys.columns import Col
    from training.data import snapshot_tags
    from training.pipeline import BUNDLE_MEMBER_COLUMNS, BUNDLE_PRODUCT_COLUMNS, _aligned

    con = duckdb.connect()
    tags = snapshot_tags(cfg.data.features)
    mem = _aligned(con, cfg.data.features / "members.parquet", Col.MEMBER, result.members,
                   (*tags.names("member"), *BUNDLE_MEMBER_COLUMNS))
    prod = _aligned(con, cfg.data.features / "products.parquet", Col.PRODUCT, result.products,
                    (*BUNDLE_PRODUCT_COLUMNS, *tags.names("product")))
    con.close()
    prod = prod.append_column("active", pa.array(np.ones(prod.num_rows, dtype=bool)))
    meta = {"as_of": cfg.data.cutoff.isoformat(), "trained_on": cfg.data.cutoff.isoformat(), "dataset": cfg.data.dataset}
    return save_bundle(out, Bundle(result.model, result.members, result.products, mem, prod, meta,
                                   tags=tags.only([*mem.column_names, *prod.column_names])))


def build_world(root: Path, spec: SynthSpec | None, as_of: date, model: str = "simple_blend",
                pick_lists: bool = True) -> World:
    """A served shop: ``spec``'s synthetic export, or (``spec`` None) Ta-Feng from ``root/raw``."""
    name = "shop" if spec is not None else "tafeng"
    canonical = root / "data" / name / "canonical"
    if spec is not None:
        synthesize(spec, root / "raw")
        ingest(resolve_source(str(root / "raw" / "mapping.toml"), root), canonical)
    else:
        ingest(resolve_source("tafeng", root), canonical)
    cfg = TrainConfig.model_validate({"data": {"dataset": name, "data_dir": str(root / "data"),
                                               "cutoff": as_of.isoformat()}, "model": {"name": model}})
    rules = load_rules(RULES)
    build_features(canonical, cfg.data.features, as_of, FeatureConfig(), tags=TagRegistry.builtin().extend(rules.tags))
    data = load_train(DataPaths(cfg.data.canonical, cfg.data.features), as_of)
    fitted = get_model(model)({}).fit(data)
    result = TrainResult(fitted, {}, {}, members=data.interactions.members, products=data.interactions.products)
    bundle = (build_bundle(cfg, result, root / "bundle", run_id=None) if pick_lists
              else bundle_without_lists(cfg, result, root / "bundle"))
    settings = ServingSettings(bundle=bundle, auth_disabled=True, events_dir=root / "events",
                               campaign_db=f"sqlite:///{root / 'campaigns.db'}", load_in_background=False, events_poll_seconds=0)
    return World(canonical, bundle, build_state(settings, bundle), as_of)
