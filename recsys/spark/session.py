"""The one place a ``SparkSession`` is made: master, ``spark.*`` settings and the errors a user
meets before Spark runs (no pyspark, no Java, an unreachable Spark Connect server).

Where the master comes from, first match wins:

1. ``spark-submit`` -- a job started by ``spark-submit --master ... --conf ...`` takes the master
   and the settings spark-submit gives it (the jobs still apply :data:`FIXED_CONF`);
2. :attr:`SparkSettings.master` -- ``--spark-master`` on the command line, or ``[spark] master``
   in a training config: ``local[2]``, ``spark://host:7077``, ``yarn``, ``k8s://https://...``,
   or a Spark Connect URL ``sc://host:15002`` (no local Java needed then);
3. the environment: ``RECSYS_SPARK_MASTER``, then pyspark's own ``SPARK_REMOTE`` (a Connect URL);
4. ``local[*]``: every core of this machine.

Settings (``--spark-conf KEY=VALUE``, repeatable, or ``[spark.conf]`` in a training config) are
passed to the builder as they are. On top of them the jobs need :data:`FIXED_CONF` -- the settings
their outputs' equality with the DuckDB / in-process paths depends on (time zone, Parquet timestamp
type); a conflicting user value is refused rather than silently producing different files.
In local mode :data:`LOCAL_DEFAULTS` apply unless given (no web UI, few shuffle partitions, the
driver's Python for the workers).

Examples
--------
>>> from recsys.spark.session import SparkSettings, get_spark          # doctest: +SKIP
>>> spark = get_spark(SparkSettings(master="local[2]", conf={"spark.driver.memory": "4g"}))  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"
MIN_JAVA = 17
INSTALL_JAVA = "apt-get install openjdk-17-jre-headless"
INSTALL_PYSPARK = "pip install -e '.[spark]'"

# What the jobs' outputs depend on. Timestamps are wall-clock times without a zone (DuckDB's
# TIMESTAMP, Spark's TIMESTAMP_NTZ) written as Parquet INT64 microseconds, like DuckDB writes them.
FIXED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
# Local mode only, unless set: one machine's worth of partitions, no UI port to bind. (The workers
# also run the interpreter that runs the job, the one recsys is installed in: PYSPARK_PYTHON.)
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
}
# ALS checkpoints its factors every few iterations when this is set (without it the lineage of a
# long fit overflows the driver's stack); in local mode a folder removed when the process ends.
CHECKPOINT_DIR = "spark.checkpoint.dir"
# never written to MLflow or printed
_SECRET = re.compile(r"secret|password|token|credential|\.key$", re.IGNORECASE)


class SparkUnavailableError(RecsysError):
    """Spark cannot start here: no pyspark, no (or too old a) Java, or no Connect server."""


@dataclass(frozen=True)
class SparkSettings:
    """Where and how to run Spark jobs (see the module docstring for the precedence)."""

    master: str | None = None
    conf: Mapping[str, str] = field(default_factory=dict)
    app_name: str = "recsys"

    @classmethod
    def from_options(cls, master: str | None, conf: list[str] | None, app_name: str = "recsys") -> SparkSettings:
        """From command-line options: ``--spark-master`` and repeated ``--spark-conf KEY=VALUE``."""
        parsed: dict[str, str] = {}
        for item in conf or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise RecsysError(f"--spark-conf {item!r} is not KEY=VALUE, e.g. --spark-conf spark.executor.memory=8g")
            parsed[key.strip()] = value.strip()
        return cls(master=master, conf=parsed, app_name=app_name)

    def resolved_master(self) -> str:
        return (self.master or os.environ.get("RECSYS_SPARK_MASTER") or os.environ.get("SPARK_REMOTE")
                or DEFAULT_MASTER)


def under_spark_submit() -> bool:
    """Whether this process was started by ``spark-submit`` (which hands it a JVM gateway)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def is_connect(master: str) -> bool:
    return master.startswith("sc://")


def java_problem(env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with this machine's Java for Spark, in one line; None when it is usable.

    Looks where Spark's launcher looks: ``$JAVA_HOME/bin/java``, else ``java`` on ``PATH``.
    """
    env = os.environ if env is None else env
    home = env.get("JAVA_HOME")
    if home:
        java = str(Path(home) / "bin" / "java")
        if not os.access(java, os.X_OK):
            return (f"Spark needs Java {MIN_JAVA}+, and JAVA_HOME={home} has no bin/java: "
                    f"install it ({INSTALL_JAVA}) or point JAVA_HOME at a Java {MIN_JAVA} runtime")
    else:
        found = shutil.which("java", path=env.get("PATH", ""))
        if found is None:
            return (f"Spark needs Java {MIN_JAVA}+ and none was found (no java on PATH, JAVA_HOME unset): "
                    f"install it with `{INSTALL_JAVA}`, or use a Spark Connect server (--spark-master sc://HOST:15002)")
        java = found
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, env=dict(env))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Spark needs Java {MIN_JAVA}+, and {java} -version failed ({exc}): install `{INSTALL_JAVA}`"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None  # an unusual vendor string: let Spark try
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        return (f"Spark 4 needs Java {MIN_JAVA}+, and {java} is Java {major}: install `{INSTALL_JAVA}` "
                f"and put it first on PATH or set JAVA_HOME")
    return None


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailableError(
            f"--engine spark needs pyspark, which is not installed: {INSTALL_PYSPARK} (and Java {MIN_JAVA}: {INSTALL_JAVA})"
        ) from None


def builder_conf(settings: SparkSettings, master: str) -> dict[str, str]:
    """The settings handed to the builder: the user's, local defaults, then :data:`FIXED_CONF`."""
    conf = dict(settings.conf)
    for key, value in FIXED_CONF.items():
        if key in conf and conf[key] != value:
            raise RecsysError(
                f"--spark-conf {key}={conf[key]} conflicts with the jobs' fixed {key}={value} "
                "(their outputs must equal the DuckDB path's); leave it out"
            )
    if master.startswith("local"):
        for key, value in LOCAL_DEFAULTS.items():
            conf.setdefault(key, value)
        if CHECKPOINT_DIR not in conf:
            conf[CHECKPOINT_DIR] = _scratch_dir()
    conf.update(FIXED_CONF)
    return conf


_SCRATCH: list[str] = []


def _scratch_dir() -> str:
    """A temporary folder for local-mode checkpoints, removed when this process exits."""
    if not _SCRATCH:
        path = tempfile.mkdtemp(prefix="recsys-spark-")
        _SCRATCH.append(path)
        atexit.register(shutil.rmtree, path, True)
    return _SCRATCH[0]


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """The active session if there is one (a test's, spark-submit's), else a new one.

    Raises
    ------
    SparkUnavailableError
        pyspark is not installed, Java is missing or too old (local / cluster masters), or a Spark
        Connect server cannot be reached -- each a one-line message saying what to install or fix.
    """
    settings = settings or SparkSettings()
    _require_pyspark()
    # pyspark warns at every session about pandas 3; the jobs exchange data as Arrow, not pandas
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_fixed(active)
        return active
    if under_spark_submit():
        spark = SparkSession.builder.appName(settings.app_name).getOrCreate()
        _apply_fixed(spark)
        return spark
    master = settings.resolved_master()
    conf = builder_conf(settings, master)
    builder = SparkSession.builder.appName(settings.app_name)
    if is_connect(master):
        builder = builder.remote(master)
        conf = {k: v for k, v in conf.items() if not k.startswith(("spark.driver.", "spark.ui.", "spark.pyspark."))}
    else:
        problem = java_problem()
        if problem:
            raise SparkUnavailableError(problem)
        builder = builder.master(master)
        if master.startswith("local") and "spark.pyspark.python" not in conf:
            # pyspark starts Python workers with $PYSPARK_PYTHON (else "python3" on PATH): in local
            # mode, the interpreter this project is installed in
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
        spark.version  # noqa: B018 - one round trip: a Connect server that is not there fails here
    except Exception as exc:  # py4j / gRPC errors: reduce to the first line that says something
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        where = f"the Spark Connect server {master}" if is_connect(master) else f"Spark ({master})"
        raise SparkUnavailableError(f"cannot start {where}: {first[:300]}") from None
    if not is_connect(master):
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def _apply_fixed(spark: SparkSession) -> None:
    for key, value in FIXED_CONF.items():
        if spark.conf.get(key, None) != value:
            spark.conf.set(key, value)


@contextmanager
def spark_session(settings: SparkSettings | None = None) -> Iterator[SparkSession]:
    """:func:`get_spark` for one job: a session this call started is stopped at the end; one that
    was already running (a test's, spark-submit's) is left running."""
    _require_pyspark()
    from pyspark.sql import SparkSession

    existed = SparkSession.getActiveSession() is not None or under_spark_submit()
    spark = get_spark(settings)
    try:
        yield spark
    finally:
        if not existed:
            spark.stop()
            for path in _SCRATCH:
                shutil.rmtree(path, ignore_errors=True)


def describe(spark: SparkSession) -> dict[str, Any]:
    """Engine, version, master and every ``spark.*`` setting (secrets left out), for MLflow and
    the job summaries."""
    try:
        conf = dict(spark.conf.getAll)
    except Exception:  # older servers
        conf = {}
    if not conf:
        try:
            conf = dict(spark.sparkContext.getConf().getAll())
        except Exception:
            conf = {}
    conf = {k: v for k, v in sorted(conf.items()) if k.startswith("spark.") and not _SECRET.search(k)}
    master = conf.get("spark.master") or conf.get("spark.remote") or ""
    return {"engine": "spark", "spark_version": spark.version, "master": master, "conf": conf}


def write_single_parquet(frame: Any, target: Path) -> int:
    """Write a DataFrame of one partition as the single Parquet file ``target`` (zstd), the layout
    the DuckDB engine writes; returns its rows. Spark writes a folder of part files: it is written
    beside the target and its one part moved into place, so a reader never sees a partial file."""
    import pyarrow.parquet as pq

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        frame.write.mode("overwrite").option("compression", "zstd").parquet(str(staging / "out"))
        parts = sorted((staging / "out").glob("part-*.parquet"))
        if len(parts) != 1:
            raise RuntimeError(f"Spark wrote {len(parts)} files for {target.name}, expected one")
        shutil.move(str(parts[0]), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return int(pq.read_metadata(target).num_rows)
