"""Every classic trainer learns on its documented defaults, or says why it did not.

The setup of the side-by-side comparison that found AsynchronousEASGD's classic defaults at
chance: digits, the MLP 64-128-128-10, batch 32, 10 epochs, 2 workers, and nothing else set
(benchmarks/defaults.py measures the same with 2 and 4 workers and three optimizers).
"""

from __future__ import annotations

import warnings

import keras
import pytest

from distkeras_async import trainers
from distkeras_async.errors import CenterStayedBehindWarning

pytestmark = pytest.mark.slow

CLASSIC = [
    "SingleTrainer",
    "DOWNPOUR",
    "ADAG",
    "DynSGD",
    "AsynchronousEASGD",
    "AsynchronousEAMSGD",
    "EASGD",
    "AveragingTrainer",
]


def comparison_mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def train_on_defaults(name: str, digits, **changed):
    arguments = {"num_epoch": 10, "batch_size": 32, "master_port": 0, "progress": False}
    if name != "SingleTrainer":
        arguments["num_workers"] = 2
    trainer = getattr(trainers, name)(
        comparison_mlp(), "adam", "categorical_crossentropy", **arguments, **changed
    )
    return trainer, trainer.train(digits.train)


@pytest.mark.parametrize("name", CLASSIC)
def test_a_classic_trainer_learns_on_its_defaults(name, digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CenterStayedBehindWarning)  # and says nothing
        trainer, trained = train_on_defaults(name, digits)
    accuracy = digits.accuracy(trained)
    assert accuracy >= 0.93, f"{name}: {accuracy:.3f}"
    report = trainer.learning_report
    assert report is not None and report.share >= 0.5
    assert report.center_loss < report.initial_loss
    print(f"{name}: accuracy {accuracy:.3f}, center kept {report.share:.0%}")


def test_a_center_that_stayed_behind_is_reported_with_the_knob_to_turn(digits):
    """The classic AsynchronousEASGD defaults (rho=0.01, learning_rate=0.01): an elastic step
    of 1e-4 leaves the center where it started while the workers learn."""
    with pytest.warns(CenterStayedBehindWarning) as caught:
        trainer, trained = train_on_defaults(
            "AsynchronousEASGD", digits, rho=0.01, learning_rate=0.01
        )
    (warning,) = caught
    message = str(warning.message)
    assert "AsynchronousEASGD returned a center that kept" in message
    assert "alpha = learning_rate * rho = 0.01 * 0.01 = 0.0001" in message
    assert "raise rho or learning_rate" in message
    report = trainer.learning_report
    assert report.share < 0.5 and report.worker_loss < report.center_loss
    assert trainer.warnings == [message]
    assert digits.accuracy(trained) < 0.5  # what the warning is about


def test_the_check_can_be_turned_off(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CenterStayedBehindWarning)
        trainer, _ = train_on_defaults(
            "AsynchronousEASGD", digits, rho=0.01, learning_rate=0.01, check_learning=False
        )
    assert trainer.learning_report is None and trainer.warnings == []
