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


def build_world(root: Path, spec: SynthSpec, as_of: date, model: str = "simple_blend") -> World:
    synthesize(spec, root / "raw")
    canonical = root / "data" / "shop" / "canonical"
    ingest(resolve_source(str(root / "raw" / "mapping.toml"), root), canonical)
    cfg = TrainConfig.model_validate({"data": {"dataset": "shop", "data_dir": str(root / "data"),
                                               "cutoff": as_of.isoformat()}, "model": {"name": model}})
    rules = load_rules(RULES)
    build_features(canonical, cfg.data.features, as_of, FeatureConfig(), tags=TagRegistry.builtin().extend(rules.tags))
    data = load_train(DataPaths(cfg.data.canonical, cfg.data.features), as_of)
    fitted = get_model(model)({}).fit(data)
    result = TrainResult(fitted, {}, {}, members=data.interactions.members, products=data.interactions.products)
    bundle = build_bundle(cfg, result, root / "bundle", run_id=None)
    settings = ServingSettings(bundle=bundle, auth_disabled=True, events_dir=root / "events",
                               audit_log=root / "audit.jsonl", load_in_background=False, events_poll_seconds=0)
    return World(canonical, bundle, build_state(settings, bundle), as_of)
