"""Deep metric learning for retrieval: the objectives of both papers (docs/algorithms.md
§1.5, §2.3–2.4) and the retrieval metrics.

The configured loss on cosine similarities, or, for an introspective method (IDML), on the
introspective similarity of semantic + uncertainty embeddings (ISM, ``ism.a``, ``ism.b``).
A method's extra candidates (IAA's M synthetic samples per image, :meth:`Method.candidates`)
join the candidates of a pair loss (anchors = the originals); they inherit their source's
uncertainty embedding, so the boosted pair loss runs on the ISM too.

With ``mixing.kind`` (IDML's Mixup; CutMix too) the loss is
``L(x, y) + lam L(x~, y) + (1 - lam) L(x~, y[pi])``; synthesis boosts the clean pass, the
mixed passes use the plain (ISM) loss.
"""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from idml_jax import evaluation, losses, mixing, similarity
from idml_jax.models import EmbeddingModel
from idml_jax.ops import l2_normalize
from idml_jax.tasks.base import ApplyFn, Evaluation, Task


def ism_inputs(config: ml_collections.ConfigDict, mu: jax.Array) -> jax.Array:
  """The semantic embeddings [B, D] the ISM's distance ``dmu`` is computed from."""
  return l2_normalize(mu) if config.ism.semantic_distance == "normalized" else mu


def loss_on_embeddings(config: ml_collections.ConfigDict, out: dict, labels: jax.Array,
                       proxies: jax.Array | None, synthetic=None) -> jax.Array:
  """The configured loss for one pass.

  Args:
    out: model outputs: ``semantic`` [B, D] and, for IDML, ``uncertainty`` [B, D].
    labels: [B] int.
    proxies: [C, D] for proxy losses.
    synthetic: ``(z_syn [M B, D], y_syn [M B], M)`` for IAA, or None.
  """
  name, kwargs = config.loss.name, dict(config.loss.kwargs)
  loss_fn = losses.get_loss(name)
  mu, u = out["semantic"], out.get("uncertainty")
  ism = dict(a=config.ism.a, b=config.ism.b)
  if name in losses.PROXY_LOSSES:
    sim = similarity.introspective_similarity(ism_inputs(config, mu), u, proxies, **ism)
    return loss_fn(sim, labels, **kwargs)
  cand_mu, cand_u, cand_y, source = mu, u, labels, None
  if synthetic is not None:
    z_syn, y_syn, m = synthetic
    cand_mu = jnp.concatenate([mu, z_syn])
    cand_u = None if u is None else jnp.concatenate([u, jnp.tile(u, (m, 1))])
    cand_y = jnp.concatenate([labels, y_syn])
    source = losses.synthetic_source(mu.shape[0], m)
  sim = similarity.introspective_similarity(ism_inputs(config, mu), u,
                                            ism_inputs(config, cand_mu),
                                            _candidate_uncertainty(config, cand_u), **ism)
  pos, neg = losses.pair_masks(labels, cand_y, candidate_ids=source)
  return loss_fn(sim, pos, neg, **kwargs)


def _candidate_uncertainty(config: ml_collections.ConfigDict,
                           u: jax.Array | None) -> jax.Array | None:
  """The candidates' side of a pair loss's ``du``: ``u`` [N, D] (``ism.pair_uncertainty=sum``,
  du_ij = ||u_i||² + ||u_j||²) or None (``anchor``: du_ij = ||u_i||², as against proxies)."""
  return u if config.ism.pair_uncertainty == "sum" else None


def ism_diagnostics(config: ml_collections.ConfigDict, out: dict,
                    proxies: jax.Array | None) -> dict[str, jax.Array]:
  """Mean ||u|| and the distribution (mean, 10th, 90th percentile) of the introspective
  factor of the clean pass: near 1 the ISM is the cosine, near 0 it is saturated."""
  mu, u = ism_inputs(config, out["semantic"]), out["uncertainty"]
  ab = dict(a=config.ism.a, b=config.ism.b)
  if proxies is not None and config.loss.name in losses.PROXY_LOSSES:
    factor = similarity.introspective_factor(mu, u, proxies, **ab)
  else:
    factor = similarity.introspective_factor(mu, u, mu, _candidate_uncertainty(config, u), **ab)
    # The diagonal (an image with itself) is 0 by construction: left out.
    factor = jnp.where(jnp.eye(mu.shape[0], dtype=bool), jnp.nan, factor)
  p10, p90 = jnp.nanquantile(factor.reshape(-1), jnp.asarray([0.1, 0.9]))
  return {"uncertainty_norm": jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1)),
          "ism_factor_mean": jnp.nanmean(factor), "ism_factor_p10": p10, "ism_factor_p90": p90}


def _batch_stats(out: dict) -> dict:
  return {"batch_stats": out["batch_stats"]} if "batch_stats" in out else {}


class RetrievalTask(Task):
  """Embeddings for retrieval, trained with a proxy or pair loss (both papers)."""

  primary_metric = "recall@1"
  embed_outputs = ("semantic",)

  def describe(self):
    c = self.config
    return f"{c.method} | {c.loss.name} | mixing {c.mixing.kind}"

  def make_model(self, backbone, num_classes) -> nn.Module:
    m = self.config.model
    return EmbeddingModel(backbone, m.embedding_dim, uncertainty=self.method.introspective,
                          uncertainty_activation=m.uncertainty_activation,
                          uncertainty_init=m.uncertainty_init,
                          uncertainty_input=m.uncertainty_input, pooling=m.pooling,
                          head_bias=m.head_bias)

  def init_params(self, key, num_classes):
    if self.config.loss.name not in losses.PROXY_LOSSES:
      return {}
    # Kaiming-normal, fan-out: std = sqrt(2 / C) (docs/algorithms.md §1.5).
    return {"proxies": jax.random.normal(key, (num_classes, self.config.model.embedding_dim))
            * jnp.sqrt(2.0 / num_classes)}

  def loss(self, apply_fn: ApplyFn, params, images, labels, draws, step):
    config = self.config
    out = apply_fn(params["model"], images)
    proxies = params.get("proxies")
    synthetic = self.method.candidates(step, draws, out["semantic"], labels)
    loss = loss_on_embeddings(config, out, labels, proxies, synthetic)
    aux = {"loss_clean": loss, **_batch_stats(out)}
    if self.method.introspective:
      aux.update(ism_diagnostics(config, out, proxies))
    if config.mixing.kind != "none":
      mixed_images, lam = mixing.mix(images, draws, config.mixing.kind)
      mixed = apply_fn(params["model"], mixed_images)
      loss = (loss + lam * loss_on_embeddings(config, mixed, labels, proxies)
              + (1 - lam) * loss_on_embeddings(config, mixed, labels[draws["perm"]], proxies))
    return loss, aux

  def check_splits(self, splits):
    config = self.config
    names = self.evaluation_splits(splits)
    labels = [splits[n].labels for n in names]
    gallery = len(labels[-1]) - (1 if len(names) == 1 else 0)
    if max(config.eval.ks) > gallery:
      raise ValueError(f"eval.ks={tuple(config.eval.ks)} needs at least {max(config.eval.ks)} "
                       f"gallery items, but the {names[-1]} split has {gallery}"
                       f"{' besides each query' if len(names) == 1 else ''}: use "
                       f"--config.eval.ks=... with smaller K, or a larger test split.")
    classes, counts = np.unique(labels[-1], return_counts=True)
    if len(classes) < 2:
      logging.warning("The %s split has a single class: every neighbor is relevant, so "
                      "Recall@K, R-Precision and MAP@R are trivially 1.", names[-1])
    elif len(names) == 1 and np.all(counts < 2):
      logging.warning("No class of the test split has two images: no query has a relevant "
                      "item, so every retrieval metric is 0.")

  def evaluate(self, embedded):
    config = self.config
    ks = tuple(config.eval.ks)
    emb, gallery = ((embedded["query"], embedded["gallery"]) if "query" in embedded else
                    (embedded["test"], None))
    ranks = evaluation.query_ranks(
        emb["semantic"], emb["labels"], None if gallery is None else gallery["semantic"],
        None if gallery is None else gallery["labels"], max_k=max(ks),
        backend=config.eval.backend)
    metrics = ranks.metrics(ks)
    emb.update(first_hit_rank=ranks.first_hit_rank, failed=ranks.first_hit_rank > 0,
               nearest_score=ranks.nearest_score, second_score=ranks.second_score,
               **{f"query_{k}": v for k, v in ranks.per_query().items()})
    if config.eval.nmi and gallery is None:
      metrics.update(evaluation.clustering_metrics(emb["semantic"], emb["labels"],
                                                   backend=config.eval.kmeans, seed=config.seed))
    metrics.update(self.uncertainty_metrics(emb))
    scores = evaluation.confidence_scores(uncertainty_norm=self.uncertainty(emb),
                                          nearest_score=ranks.nearest_score,
                                          second_score=ranks.second_score)
    return Evaluation(metrics, emb, scores,
                      {"recall@1": ~emb["failed"], "map@r": emb["query_map@r"]})

