"""The ``recsys`` command line as a ``spark-submit`` application::

    spark-submit --master yarn --conf spark.executor.memory=8g recsys/spark/submit.py \\
        batch pre-rank --bundle /shared/bundles/acme --out hdfs:///recsys/acme/pre_ranked

Every Spark-capable command runs this way; the session takes spark-submit's master and settings
(``--spark-master`` / ``--spark-conf`` of the command are then ignored).
"""

from recsys.cli import main

if __name__ == "__main__":
    main()
