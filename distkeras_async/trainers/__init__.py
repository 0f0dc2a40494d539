"""The trainers: one trainer, the classic names over it, and the two extension points.

``DOWNPOUR(model, "adam", "categorical_crossentropy", num_workers=4).train(df)`` returns a new
trained Keras model. :mod:`~distkeras_async.trainers.base` is the one trainer (its arguments,
checked when it is made); :mod:`~distkeras_async.trainers.run` runs a training job as named
phases (parameter server, Spark workers, history); :mod:`~distkeras_async.trainers.classic`
names the classic trainers, as a table of positional orders and defaults.
"""

from distkeras_async.trainers.base import (
    AsynchronousDistributedTrainer,
    DistributedTrainer,
    SynchronizedDistributedTrainer,
    Trainer,
)
from distkeras_async.trainers.classic import (
    ADAG,
    AEASGD,
    DOWNPOUR,
    EAMSGD,
    EASGD,
    AsynchronousEAMSGD,
    AsynchronousEASGD,
    AveragingTrainer,
    DynSGD,
    SingleTrainer,
)

__all__ = [
    "ADAG",
    "AEASGD",
    "DOWNPOUR",
    "EAMSGD",
    "EASGD",
    "AsynchronousDistributedTrainer",
    "AsynchronousEAMSGD",
    "AsynchronousEASGD",
    "AveragingTrainer",
    "DistributedTrainer",
    "DynSGD",
    "SingleTrainer",
    "SynchronizedDistributedTrainer",
    "Trainer",
]
