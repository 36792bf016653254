"""Image classification with the introspective metric (IDML §1.4, docs/algorithms.md §1.4).

The classifier's columns act as proxies: plain logits ``z_c = w_c · h``, an uncertainty
branch ``relu(W_u h)``; the loss is the label-mixed cross-entropy
``lam CE(out, y) + (1 - lam) CE(out, y[pi])`` (``mixing.kind``: none, Mixup, CutMix) on
the introspective logits (``idml``, ``ism.a``, ``ism.b``) or the plain logits
(``baseline``); evaluation uses the plain logits (top-1 / top-5, calibration).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from idml_jax import evaluation, mixing
from idml_jax.models import ClassifierModel
from idml_jax.tasks.base import ApplyFn, Evaluation, Task


class ClassificationTask(Task):
  """A classifier whose ISM logits train and whose plain logits test."""

  primary_metric = "top1"
  embed_outputs = ("logits", "introspective_logits")

  @classmethod
  def trains(cls, method):
    return not method.synthesizes  # No pair loss to add candidates to.

  def describe(self):
    return f"classification ({self.config.method}, mixing {self.config.mixing.kind})"

  def make_model(self, backbone, num_classes) -> nn.Module:
    if num_classes < 2:
      raise ValueError(f"A classifier needs num_classes >= 2; got {num_classes}.")
    config = self.config
    cfg = config.classification
    return ClassifierModel(backbone, num_classes, uncertainty=self.method.introspective,
                           uncertainty_dim=cfg.uncertainty_dim,
                           uncertainty_init=config.model.uncertainty_init, bias=cfg.bias,
                           a=config.ism.a, b=config.ism.b)

  def loss(self, apply_fn: ApplyFn, params, images, labels, draws, step):
    """``aux`` has the training accuracy (plain logits, unmixed labels) and ``lam``."""
    images, lam = mixing.mix(images, draws, self.config.mixing.kind)
    out = apply_fn(params["model"], images)
    idml = self.method.introspective
    logits = out["introspective_logits"] if idml else out["logits"]
    loss = mixing.mixed_cross_entropy(logits, labels, lam, draws.get("perm"))
    aux = {"accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == labels), "lam": lam}
    if "batch_stats" in out:
      aux["batch_stats"] = out["batch_stats"]
    if idml:
      aux["uncertainty_norm"] = jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1))
    return loss, aux

  def evaluate(self, embedded):
    emb = embedded["test"]
    rank = evaluation.true_class_rank(emb["logits"], emb["labels"])
    metrics = evaluation.classification_metrics(emb["logits"], emb["labels"])
    emb.update(first_hit_rank=rank, failed=rank > 0)
    calibration = {"softmax": evaluation.expected_calibration_error(
        evaluation.softmax_confidence(emb["logits"]), rank == 0)}
    if "introspective_logits" in emb:
      ism_rank = evaluation.true_class_rank(emb["introspective_logits"], emb["labels"])
      calibration["ism"] = evaluation.expected_calibration_error(
          evaluation.softmax_confidence(emb["introspective_logits"]), ism_rank == 0)
    metrics.update({f"ece_{k}": v["ece"] for k, v in calibration.items()})
    emb["calibration"] = calibration
    metrics.update(self.uncertainty_metrics(emb))
    scores = evaluation.confidence_scores(uncertainty_norm=self.uncertainty(emb),
                                          logits=emb["logits"])
    return Evaluation(metrics, emb, scores, {"top1": rank == 0})
