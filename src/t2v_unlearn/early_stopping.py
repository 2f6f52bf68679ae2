"""Stop unlearning once the judge no longer finds the concept in text-to-image samples."""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl

from t2v_unlearn.concepts import EvalItem
from t2v_unlearn.evaluate import judge_images

log = logging.getLogger(__name__)


class JudgeEarlyStopping(pl.Callback):
    """After each epoch, judge `seeds` images per target prompt; stop when the rate is at most
    `threshold`. `stopped_epoch` (from 1) records the epoch that met it, or stays None."""

    def __init__(self, backend, judge, items: list[EvalItem], threshold: float = 0.1, seeds: int = 2,
                 seed: int = 2000):
        self.backend = backend
        self.judge = judge
        self.samples = [item for item in items if item.group == "target" for _ in range(seeds)]
        self.seeds = [seed + j for item in items if item.group == "target" for j in range(seeds)]
        if not self.samples:
            raise ValueError("early stopping needs at least one target prompt")
        self.threshold = threshold
        self.stopped_epoch: int | None = None
        self.history: list[float] = []

    def target_rate(self, text_encoder) -> float:
        was_training = text_encoder.training
        text_encoder.eval()
        try:
            images = self.backend.generate_images([s.prompt for s in self.samples], self.seeds,
                                                  text_encoder=text_encoder, desc="early-stop check")
        finally:
            text_encoder.train(was_training)
        return float(np.mean(judge_images(self.judge, images, self.samples)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rate = self.target_rate(pl_module.text_encoder)
        self.history.append(rate)
        epoch = trainer.current_epoch + 1
        pl_module.log("early_stop/target_rate", rate, on_epoch=True)
        log.info("Epoch %d: judge finds the target in %.2f of %d images (stop at <= %.2f)",
                 epoch, rate, len(self.samples), self.threshold)
        if rate <= self.threshold and self.stopped_epoch is None:
            self.stopped_epoch = epoch
            trainer.should_stop = True
