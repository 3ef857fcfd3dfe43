"""A second dataset, with a schema unlike Ta-Feng's, runs through the same commands by its
column-mapping config alone.

``recsys data synth --raw`` writes the synthetic purchases as a retailer's raw export (gzip
``;``-separated sales lines with Chinese headers and timestamps, a Parquet product master, a
member file with day-first dates and a channel-identities file) plus a few lines of export noise;
then, exactly as for Ta-Feng, ``recsys data ingest synth_retailer`` (the packaged mapping) ->
``recsys features build`` -> ``recsys train``. Known answers: the noise lines are the rejected
lines, reason by reason; the kept lines are the very purchases the canonical generator writes for
the same spec; every channel account folds into its member; and a model beats global popularity.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from recsys.cli import app
from recsys.columns import Col
from recsys.data.ingest import REJECT_REASONS
from recsys.data.mapping import resolve_source
from recsys.data.synth import SynthSpec, synthesize, synthesize_retailer
from recsys.data.synth.generator import CHANNELS
from recsys.data.synth.retailer import (
    RETAILER_FILES,
    RETAILER_LINE_COLUMNS,
    RETAILER_NAME,
    RETAILER_NOISE,
    RETAILER_REGIONS,
    retailer_mapping_toml,
)
from training.config import TrainConfig
from training.pipeline import fit_and_evaluate
from training.tracking import metric_key

pytestmark = [  # MLflow 3.17 against SQLAlchemy 2.1 and pandas 3: noise from inside MLflow
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.filterwarnings("ignore:Operation with range is deprecated"),
]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "synth_retailer.toml"
SPEC = SynthSpec(members=1_500, products=600, lines=40_000, categories=50, seed=3)
DIRTY = 7  # lines of each kind of export noise
TEST_MODEL = "simple_blend"  # hybrid takes ~25 s here; the README shows it at 1M lines


def _toml(value: object) -> str:
    return json.dumps(str(value))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The four commands, once, through the CLI entry point; each must exit 0."""
    root = tmp_path_factory.mktemp("second-dataset")
    data = root / "data"
    raw = data / RETAILER_NAME / "raw"  # where the packaged mapping's relative paths point
    shipped = TrainConfig.from_toml(CONFIG)
    # The shipped config's data section and MLflow names; a faster model, no next-basket refit.
    config = root / "train.toml"
    config.write_text(
        f"[data]\ndataset = {_toml(shipped.data.dataset)}\ndata_dir = {_toml(data)}\n"
        f"cutoff = {_toml(shipped.data.cutoff)}\ntest_end = {_toml(shipped.data.test_end)}\n"
        f"[model]\nname = {_toml(TEST_MODEL)}\n"
        "[evaluation]\nks = [10]\naudience_sizes = [100, 500]\nnext_basket = false\n"
        f"[mlflow]\nexperiment = {_toml(shipped.mlflow.experiment)}\n"
        f"registered_model = {_toml(shipped.mlflow.registered_model)}\n",
        encoding="utf-8",
    )
    uri = f"sqlite:///{root / 'mlflow.db'}"
    steps = {
        "synth": ["data", "synth", "--raw", "--out", str(raw), "--members", str(SPEC.members),
                  "--products", str(SPEC.products), "--lines", str(SPEC.lines),
                  "--categories", str(SPEC.categories), "--seed", str(SPEC.seed),
                  "--dirty-lines", str(DIRTY)],
        "ingest": ["data", "ingest", RETAILER_NAME, "--data-dir", str(data)],
        "features": ["features", "build", "--data-dir", str(data), "--dataset", shipped.data.dataset,
                     "--as-of", shipped.data.cutoff.isoformat()],
        "train": ["train", "--config", str(config), "--no-register", "--tracking-uri", uri],
    }
    outputs: dict[str, str] = {}
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for name, args in steps.items():
            result = runner.invoke(app, args)
            assert result.exit_code == 0, f"recsys {' '.join(args)}:\n{result.output}\n{result.exception!r}"
            outputs[name] = result.output
    canonical = data / shipped.data.dataset / "canonical"
    return SimpleNamespace(
        root=root, raw=raw, data=data, config=config, uri=uri, outputs=outputs, shipped=shipped,
        canonical=canonical, features=data / shipped.data.dataset / "features" / shipped.data.cutoff.isoformat(),
        report=json.loads((canonical / "validation_report.json").read_text(encoding="utf-8")),
    )


def _sales_lines(raw: Path) -> list[list[str]]:
    with gzip.open(raw / RETAILER_FILES["transactions"], "rt", encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter=";"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ the raw export


def test_the_export_has_its_own_layout(run: SimpleNamespace) -> None:
    rows = _sales_lines(run.raw)
    header, first = rows[0], rows[1]
    assert tuple(header) == RETAILER_LINE_COLUMNS
    assert not set(header) & {Col.MEMBER, Col.PRODUCT, Col.TS, Col.QUANTITY, Col.AMOUNT}
    assert len(rows) - 1 == SPEC.lines + len(RETAILER_NOISE) * DIRTY
    line = dict(zip(header, first, strict=True))
    assert line["销售时间"].startswith("2024年01月01日 ")  # in time order, Chinese-style stamps
    assert line["渠道"] in CHANNELS and len(line["商品编码"]) == 13
    assert pq.read_schema(run.raw / "products.parquet").names == [
        "sku", "cat_code", "list_price", "brand_name", "title", "first_listed"]
    members = (run.raw / "members.csv").read_text(encoding="utf-8").splitlines()
    assert members[0].replace('"', "") == "member_no,join_date,age_band,area"
    day, month, year = members[1].split(",")[1].split("/")  # day first
    assert len(day) == 2 and len(month) == 2 and len(year) == 4
    identities = (run.raw / "identities.csv").read_text(encoding="utf-8").splitlines()
    assert len(identities) - 1 == len(CHANNELS) * SPEC.members


def test_the_written_mapping_is_the_packaged_one_with_absolute_paths(run: SimpleNamespace) -> None:
    written = resolve_source(str(run.raw / "mapping.toml"), run.root / "elsewhere")
    packaged = resolve_source(RETAILER_NAME, run.data)
    assert written == packaged
    assert (run.raw / "mapping.toml").read_text(encoding="utf-8") == retailer_mapping_toml(run.raw)


def test_same_spec_same_files(run: SimpleNamespace, tmp_path: Path) -> None:
    synthesize_retailer(SPEC, tmp_path / "again", DIRTY)
    for file in RETAILER_FILES.values():
        assert _digest(tmp_path / "again" / file) == _digest(run.raw / file), file
    synthesize_retailer(SynthSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}), tmp_path / "other", DIRTY)
    assert _digest(tmp_path / "other" / RETAILER_FILES["transactions"]) != _digest(
        run.raw / RETAILER_FILES["transactions"])


# ------------------------------------------------------------------------------ ingest


def test_rows_in_are_kept_plus_rejected_by_the_injected_reasons(run: SimpleNamespace) -> None:
    report = run.report
    assert report["dataset"] == RETAILER_NAME
    assert report["rows_in"] == SPEC.lines + len(RETAILER_NOISE) * DIRTY
    assert report["rows_kept"] == SPEC.lines
    assert report["rows_in"] == report["rows_kept"] + report["rows_rejected"]
    expected = {reason: 0 for reason in REJECT_REASONS}
    for reason in RETAILER_NOISE.values():
        expected[reason] += DIRTY
    assert report["rejected_by_reason"] == expected
    # all four tables came from their own files, nothing in them was rejected
    for table in ("products", "members", "identities"):
        assert report["tables"][table]["rows_rejected"] == 0, table
    assert report["outputs"] == {"transactions.parquet": SPEC.lines,
                                 "products.parquet": SPEC.products, "members.parquet": SPEC.members}
    assert "kept" in run.outputs["ingest"] and "unknown_product" in run.outputs["ingest"]


def test_channel_accounts_fold_into_one_member(run: SimpleNamespace) -> None:
    assert run.report["repaired_by_reason"]["identity_folded"] == SPEC.lines
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{run.canonical / 'transactions.parquet'}')")
    con.execute(f"CREATE VIEW ident AS SELECT * FROM read_csv('{run.raw / 'identities.csv'}', all_varchar = true)")
    # no account id is left: every line names a member number
    assert con.execute(r"SELECT bool_and(regexp_full_match(member_id, 'VIP\d{8}')) FROM t").fetchone()[0]
    # a member who bought via the app and at the till: two account ids in the export, one member
    member, app_account, pos_account = con.execute("""
        SELECT member_id, any_value(i_app.account_id), any_value(i_pos.account_id)
        FROM t JOIN ident i_app ON i_app.member_no = t.member_id AND i_app.channel = 'app'
               JOIN ident i_pos ON i_pos.member_no = t.member_id AND i_pos.channel = 'pos'
        GROUP BY member_id
        HAVING count(*) FILTER (t.channel = 'app') > 0 AND count(*) FILTER (t.channel = 'pos') > 0
        ORDER BY member_id LIMIT 1""").fetchone()
    assert app_account != pos_account
    cards = {row[4] for row in _sales_lines(run.raw)[1:]}
    assert {app_account, pos_account} <= cards
    # raw card numbers outnumber the members they belong to
    members_buying = con.execute("SELECT count(DISTINCT member_id) FROM t").fetchone()[0]
    assert len(cards - {""}) > members_buying
    assert member.startswith("VIP")


def test_kept_lines_are_the_purchases_the_canonical_generator_writes(run: SimpleNamespace,
                                                                      tmp_path: Path) -> None:
    """Same spec, two layouts: after the mapping, line for line the same purchases.

    Ids differ (VIP00000042 / M0000042, MD0003 / S0003, a barcode / P000017), so lines are
    compared by the numbers inside the ids and by what the product table says of the product.
    """
    synthesize(SPEC, tmp_path)
    con = duckdb.connect()

    def lines(folder: Path) -> str:
        number = r"CAST(regexp_extract({}, '(\d+)$', 1) AS INTEGER)"
        return f"""
            SELECT {number.format('t.member_id')} AS member, {number.format('t.store_id')} AS store,
                   t.ts, t.quantity, t.amount, t.channel, {number.format('p.category')} AS category,
                   {number.format('p.brand')} AS brand, p.price, p.launched_at
            FROM read_parquet('{folder / 'transactions.parquet'}') t
            JOIN read_parquet('{folder / 'products.parquet'}') p USING (product_id)"""

    retailer, canonical = lines(run.canonical), lines(tmp_path)
    assert con.execute(f"SELECT count(*) FROM ({retailer})").fetchone()[0] == SPEC.lines
    for one, other in ((retailer, canonical), (canonical, retailer)):
        assert con.execute(f"SELECT count(*) FROM (({one}) EXCEPT ALL ({other}))").fetchone()[0] == 0
    # one receipt per shopping trip
    baskets, trips = con.execute(f"""
        SELECT (SELECT count(DISTINCT basket_id) FROM read_parquet('{run.canonical / 'transactions.parquet'}')),
               (SELECT count(DISTINCT (member_id, ts)) FROM read_parquet('{tmp_path / 'transactions.parquet'}'))
        """).fetchone()
    assert baskets == trips


# ------------------------------------------------------------------------------ features


def test_tags_are_present_in_the_features(run: SimpleNamespace) -> None:
    con = duckdb.connect()
    members = f"read_parquet('{run.features / 'members.parquet'}')"
    products = f"read_parquet('{run.features / 'products.parquet'}')"
    assert con.execute(f"SELECT count(*) FROM {members}").fetchone()[0] == SPEC.members
    for tag in ("value_segment", "lifecycle", "price_sensitivity", "age_group", "region",
                "preferred_channel"):
        n = con.execute(f"SELECT count(DISTINCT {tag}) FROM {members}").fetchone()[0]
        assert n >= 2, tag
    regions = {r[0] for r in con.execute(f"SELECT DISTINCT region FROM {members}").fetchall()}
    assert regions == set(RETAILER_REGIONS)  # the member file's own values
    channels = {r[0] for r in con.execute(f"SELECT DISTINCT preferred_channel FROM {members}").fetchall()}
    assert channels - {None} == set(CHANNELS)
    # channel: every channel a member bought through (one list per member); store: the home store
    multi, all_channels = con.execute(
        f"SELECT count(*) FILTER (len(channel) > 1), list_sort(list_distinct(flatten(list(channel)))) "
        f"FROM {members}").fetchone()
    assert multi > 0 and set(all_channels) == set(CHANNELS)
    stores = con.execute(f"SELECT count(DISTINCT store) FROM {members}").fetchone()[0]
    assert stores >= 2
    manifest = json.loads((run.features / "manifest.json").read_text(encoding="utf-8"))
    channel = next(t for t in manifest["tags"] if t["name"] == "channel")
    assert channel["multi"] and sum(channel["counts"].values()) > SPEC.members - channel["missing"]
    bands, brands, new, never_sold = con.execute(
        f"SELECT count(DISTINCT price_band), count(DISTINCT brand), count(*) FILTER (is_new), "
        f"count(*) FILTER (never_sold) FROM {products}").fetchone()
    assert bands == 3 and brands > 50 and new > 0 and never_sold > 0


# ------------------------------------------------------------------------------ training


def test_shipped_config_points_at_the_mapping_and_the_synthetic_period(run: SimpleNamespace) -> None:
    cfg = run.shipped
    assert cfg.data.dataset == resolve_source(RETAILER_NAME, run.data).name
    assert SPEC.start < cfg.data.cutoff <= SPEC.end < cfg.data.test_end
    assert cfg.model.name == "hybrid"
    cfg.model_params()  # its parameters are valid for the model


def test_the_trained_model_beats_global_popularity(run: SimpleNamespace) -> None:
    client = MlflowClient(tracking_uri=run.uri)
    experiment = client.get_experiment_by_name(run.shipped.mlflow.experiment)
    (logged,) = client.search_runs([experiment.experiment_id])
    recall = logged.data.metrics[metric_key("recall@10")]
    assert not client.search_registered_models()  # --no-register

    baseline = TrainConfig.from_toml(run.config)
    baseline.model.name = "popular"
    popular = fit_and_evaluate(baseline, Console(quiet=True)).metrics["recall@10"]
    # the synthetic members rebuy staples: a model that knows them beats the popularity list
    assert recall > 1.2 * popular, (recall, popular)
    assert logged.data.metrics[metric_key("repeat_recall@10")] > 0.5


def test_bad_noise_options_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--dirty-lines", "3"])
    assert result.exit_code == 2 and "--dirty-lines needs --raw" in result.output
    result = runner.invoke(app, ["data", "synth", "--raw", "--out", str(tmp_path / "y"),
                                 "--dirty-lines", "-1"])
    assert result.exit_code == 2 and "dirty_lines must be an integer >= 0" in result.output


def test_training_reports_its_stages_in_the_log(run: SimpleNamespace) -> None:
    # not a terminal (as in CI or nohup): a timestamped line per stage start and end, with counts
    import re

    lines = [line for line in run.outputs["train"].splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    text = "\n".join(lines)
    for stage in ("loading the split", "fitting simple_blend", "evaluating audiences", "evaluating picks"):
        assert re.search(rf"{stage}.* \.\.\.$", text, re.M), stage
        assert re.search(rf"{stage}.*: .*done in \d", text), stage
    assert re.search(r"evaluating audiences: [\d,]+ products done in", text)
    assert re.search(r"ranking every member.s top 100 picks: [\d,]+ members done in", text)
