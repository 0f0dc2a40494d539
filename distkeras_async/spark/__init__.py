"""Spark glue: DataFrame -> partitions -> workers, Arrow -> numpy, and distributed prediction.

With :mod:`distkeras_async.ml` and :mod:`distkeras_async.trainers`, the only packages that
import pyspark.
"""

from distkeras_async.spark.jobs import FAST_BARRIER_CONF, prepare, run_workers, warm_up
from distkeras_async.spark.predictor import ModelPredictor

__all__ = ["FAST_BARRIER_CONF", "ModelPredictor", "prepare", "run_workers", "warm_up"]
