"""The training objective of each method (ALGORITHMS.md §1.5, §2.3–2.4).

* ``baseline``: the configured loss on cosine similarities.
* ``idml``: semantic + uncertainty embeddings, the introspective similarity (ISM),
  and Mixup: ``L(x, y) + lam L(x~, y) + (1 - lam) L(x~, y[pi])``, lam ~ Beta(a, a).
* ``iaa``: after ``start_epoch``, M synthetic samples per image from the class
  statistics join the candidates of a pair loss (anchors = the originals).
* ``idml+iaa``: both; synthetic samples inherit their source's uncertainty embedding
  and the boosted pair loss runs on the ISM. Synthesis boosts the clean pass; the
  Mixup passes use the plain ISM pair loss.

``task="classification"`` (§1.4): label-mixed cross-entropy (Mixup / CutMix / none) on the
introspective logits (``idml``) or the plain logits (``baseline``).

With ``model.train_bn`` the model outputs carry the updated ``batch_stats`` (of the clean
pass); they come back in ``aux``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from idml_jax import iaa, losses, mixing, similarity


def uses_idml(method: str) -> bool:
  return method in ("idml", "idml+iaa")


def uses_iaa(method: str) -> bool:
  return method in ("iaa", "idml+iaa")


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
  a, b = config.idml.a, config.idml.b
  if name in losses.PROXY_LOSSES:
    sim = similarity.proxy_introspective_similarity(mu, u, proxies, a, b)
    return loss_fn(sim, labels, **kwargs)
  cand_mu, cand_u, cand_y, source = mu, u, labels, None
  if synthetic is not None:
    z_syn, y_syn, m = synthetic
    cand_mu = jnp.concatenate([mu, z_syn])
    cand_u = None if u is None else jnp.concatenate([u, jnp.tile(u, (m, 1))])
    cand_y = jnp.concatenate([labels, y_syn])
    source = losses.synthetic_source(mu.shape[0], m)
  sim = similarity.pairwise_introspective_similarity(mu, u, cand_mu, cand_u, a, b)
  pos, neg = losses.pair_masks(labels, cand_y, candidate_ids=source)
  return loss_fn(sim, pos, neg, **kwargs)


def total_loss(config: ml_collections.ConfigDict, apply_fn, params, images: jax.Array,
               labels: jax.Array, key: jax.Array, stats: iaa.ClassStats | None,
               strength: jax.Array, synthesize: bool) -> tuple[jax.Array, dict]:
  """The method's loss for one batch of normalised images [B, H, W, 3]."""
  if config.task == "classification":
    return classification_loss(config, apply_fn, params, images, labels, key)
  k_syn, k_lam, k_perm = jax.random.split(key, 3)
  out = apply_fn(params["model"], images)
  proxies = params.get("proxies")
  synthetic = None
  if synthesize:
    m = config.iaa.num_synthetic
    z_syn, y_syn = iaa.synthesize(k_syn, out["semantic"], labels, stats.synthesis_covariance,
                                  lam=strength, num=m)
    synthetic = (z_syn, y_syn, m)
  loss = loss_on_embeddings(config, out, labels, proxies, synthetic)
  aux = {"loss_clean": loss, **_batch_stats(out)}
  if uses_idml(config.method):
    aux["uncertainty_norm"] = jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1))
    if config.idml.mixup:
      lam = jax.random.beta(k_lam, config.idml.mixup_alpha, config.idml.mixup_alpha)
      perm = jax.random.permutation(k_perm, images.shape[0])
      mixed = apply_fn(params["model"], lam * images + (1 - lam) * images[perm])
      loss = (loss + lam * loss_on_embeddings(config, mixed, labels, proxies)
              + (1 - lam) * loss_on_embeddings(config, mixed, labels[perm], proxies))
  return loss, aux


def _batch_stats(out: dict) -> dict:
  return {"batch_stats": out["batch_stats"]} if "batch_stats" in out else {}


def classification_loss(config: ml_collections.ConfigDict, apply_fn, params, images: jax.Array,
                        labels: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
  """Label-mixed cross-entropy ``lam CE(out, y) + (1 - lam) CE(out, y[perm])`` (§1.4).

  ``out`` = introspective logits for ``idml``, plain logits for ``baseline``; without mixing
  ``lam = 1``. ``aux`` has the training accuracy (plain logits, unmixed labels) and lam.
  """
  cfg = config.classification
  if cfg.mixing == "mixup":
    images, lam, perm = mixing.mixup(key, images, cfg.alpha)
  elif cfg.mixing == "cutmix":
    images, lam, perm = mixing.cutmix(key, images, cfg.alpha, cfg.cutmix_prob)
  else:
    lam, perm = jnp.float32(1.0), jnp.arange(images.shape[0])
  out = apply_fn(params["model"], images)
  logits = out["introspective_logits"] if uses_idml(config.method) else out["logits"]
  loss = mixing.mixed_cross_entropy(logits, labels, lam, perm)
  aux = {"accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == labels), "lam": lam,
         **_batch_stats(out)}
  if uses_idml(config.method):
    aux["uncertainty_norm"] = jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1))
  return loss, aux
