"""Keras callbacks of `embed`'s training: stop on a non-finite loss, stop once the keys are learnt."""

import math

import numpy as np

from .backend import keras as _keras
from .models import predict_classes


class StopOnNaN(_keras().callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.failed_at = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_at = (self.epoch + 1, batch + 1)
            self.model.stop_training = True


class StopWhenKeysLearnt(_keras().callbacks.Callback):
    """Ends training after the first epoch at which every key image gets its label."""

    def __init__(self, keys, labels):
        super().__init__()
        self.keys, self.labels = keys, np.asarray(labels)
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        if np.all(predict_classes(self.model, self.keys) == self.labels):
            self.model.stop_training = True
