"""Spark jobs: the same pipeline on a distributed engine when one machine is not enough.

Optional: ``pip install -e '.[spark]'`` and a Java 17 runtime (Debian: ``openjdk-17-jre-headless``)
for local or cluster mode; a Spark Connect server (``sc://host:15002``) needs no local Java.

* :mod:`recsys.spark.session` -- the one place a ``SparkSession`` is made (master, ``spark.*``
  settings, the missing-Java / missing-pyspark errors);
* :mod:`recsys.spark.batch` -- batch scoring over member partitions (pre-ranked pick lists, member
  vectors, audience exports, push lists), written as Parquet the bundle and the exports read as is.

Nothing here is imported by ``make demo``'s path: every module imports pyspark lazily.
"""
