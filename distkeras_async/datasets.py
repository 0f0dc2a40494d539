"""The demo data set and model: scikit-learn's bundled digits (no download) and an MLP.

Shared by ``distkeras-async demo``, the benchmarks and the tests, so all three train the same
thing: 1,797 8x8 images of handwritten digits, 64 features scaled to [0, 1], ten classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Digits:
    """The digits split: a Spark training DataFrame and a numpy test set.

    Attributes:
        train: DataFrame with ``features`` (dense vector of 64), ``label`` (one-hot vector of
            10) and ``label_index`` (the digit).
        x_test: test features, float32 of shape (n, 64).
        y_test: test digits, int of shape (n,).
    """

    train: Any
    x_test: np.ndarray
    y_test: np.ndarray

    def accuracy(self, model: Any) -> float:
        """Test accuracy of a Keras classifier."""
        predictions = model.predict(self.x_test, verbose=0).argmax(axis=1)
        return float((predictions == self.y_test).mean())


def load_digits_split(test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``x_train, x_test, y_train, y_test`` as numpy arrays (stratified split)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return tuple(
        train_test_split(
            x, data.target, test_size=test_size, random_state=seed, stratify=data.target
        )
    )


def digits(spark: Any, test_size: float = 0.2, seed: int = 0) -> Digits:
    """The digits data set as a cached Spark DataFrame for training plus a test set."""
    from pyspark.ml.linalg import Vectors

    x_train, x_test, y_train, y_test = load_digits_split(test_size, seed)
    eye = np.eye(10)
    rows = [
        (Vectors.dense(f.astype(float)), Vectors.dense(eye[int(t)]), int(t))
        for f, t in zip(x_train, y_train, strict=True)
    ]
    train = spark.createDataFrame(rows, ["features", "label", "label_index"]).cache()
    return Digits(train, x_test, y_test.astype(int))


def digits_mlp(hidden: int = 64, seed: int | None = 0) -> Any:
    """A small MLP for digits: 64 inputs, one ReLU layer, softmax over 10 classes."""
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
