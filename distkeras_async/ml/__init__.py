"""Spark ML stages: ``KerasEstimator``, ``KerasModel`` and ``ArgmaxTransformer``.

The estimator and the model carry their Params and save and load like Spark's own stages.
"""

from distkeras_async.ml.estimator import KerasEstimator, KerasModel
from distkeras_async.ml.transformers import ArgmaxTransformer

__all__ = ["ArgmaxTransformer", "KerasEstimator", "KerasModel"]
