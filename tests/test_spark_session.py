"""The Spark session factory: what a user meets before Spark runs (no Java, an old Java, bad
settings), checked without starting a JVM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.errors import RecsysError
from recsys.spark.session import FIXED_CONF, SparkSettings, builder_conf, java_problem


def fake_java(folder: Path, version_line: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    java = folder / "java"
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return java


def test_no_java_says_what_to_install_in_one_line(tmp_path):
    problem = java_problem({"PATH": str(tmp_path)})
    assert problem is not None and "\n" not in problem
    assert "apt-get install openjdk-17-jre-headless" in problem
    assert "JAVA_HOME" in problem


def test_a_java_home_without_java_is_named(tmp_path):
    problem = java_problem({"PATH": "", "JAVA_HOME": str(tmp_path)})
    assert problem is not None and str(tmp_path) in problem and "openjdk-17-jre-headless" in problem


@pytest.mark.parametrize("line,major", [('openjdk version "11.0.21" 2023-10-17', 11), ('java version "1.8.0_392"', 8)])
def test_an_old_java_is_refused_with_its_version(tmp_path, line, major):
    fake_java(tmp_path / "bin", line)
    problem = java_problem({"PATH": str(tmp_path / "bin")})
    assert problem is not None and f"Java {major}" in problem and "openjdk-17-jre-headless" in problem


def test_java_17_from_java_home_is_accepted(tmp_path):
    fake_java(tmp_path / "jdk" / "bin", 'openjdk version "17.0.15" 2025-04-15')
    assert java_problem({"PATH": "", "JAVA_HOME": str(tmp_path / "jdk")}) is None


def test_this_machine_has_a_usable_java():
    # make test installs it (make java); every Spark test below depends on it
    assert java_problem() is None


def test_starting_spark_without_java_is_one_line_not_a_py4j_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYSPARK_GATEWAY_PORT", "SPARK_REMOTE")}
    env["PATH"] = str(tmp_path)  # no java on it; the interpreter is called by its full path
    env["RECSYS_SPARK_MASTER"] = "local[1]"
    code = ("from recsys.spark.session import get_spark\n"
            "from recsys.errors import RecsysError\n"
            "try:\n    get_spark()\nexcept RecsysError as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SparkUnavailableError Spark needs Java 17+")
    assert "Traceback" not in out.stderr and "py4j" not in out.stderr.lower()


def test_settings_the_outputs_depend_on_cannot_be_overridden():
    with pytest.raises(RecsysError, match="spark.sql.session.timeZone=Asia/Shanghai conflicts"):
        builder_conf(SparkSettings(conf={"spark.sql.session.timeZone": "Asia/Shanghai"}), "local[2]")
    conf = builder_conf(SparkSettings(conf={"spark.sql.shuffle.partitions": "200"}), "local[2]")
    assert conf["spark.sql.shuffle.partitions"] == "200"  # the user's value beats a local default
    assert all(conf[k] == v for k, v in FIXED_CONF.items())
    cluster = builder_conf(SparkSettings(), "yarn")
    assert "spark.ui.enabled" not in cluster and "spark.checkpoint.dir" not in cluster


def test_spark_conf_options_are_key_value_pairs():
    s = SparkSettings.from_options("spark://h:7077", ["spark.executor.memory=8g", "spark.x = y"])
    assert s.master == "spark://h:7077" and dict(s.conf) == {"spark.executor.memory": "8g", "spark.x": "y"}
    with pytest.raises(RecsysError, match="not KEY=VALUE"):
        SparkSettings.from_options(None, ["spark.executor.memory"])


def test_a_spark_command_without_java_fails_with_that_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYSPARK_GATEWAY_PORT", "SPARK_REMOTE")}
    env["PATH"] = str(tmp_path)
    env["RECSYS_SPARK_MASTER"] = "local[1]"
    recsys = Path(sys.executable).with_name("recsys")
    out = subprocess.run([str(recsys), "batch", "member-vectors", "--bundle", str(tmp_path), "--out", str(tmp_path / "v")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Spark needs Java 17+") and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()
