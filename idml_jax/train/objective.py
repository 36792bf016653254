"""The training objective of each method (docs/algorithms.md §1.5, §2.3–2.4, §1.4).

* ``baseline``: the configured loss on cosine similarities.
* ``idml``: semantic + uncertainty embeddings, the introspective similarity (ISM), and
  Mixup: ``L(x, y) + lam L(x~, y) + (1 - lam) L(x~, y[pi])``, lam ~ Beta(a, a).
* ``iaa``: after ``start_epoch``, M synthetic samples per image from the class
  statistics join the candidates of a pair loss (anchors = the originals).
* ``idml+iaa``: both; synthetic samples inherit their source's uncertainty embedding
  and the boosted pair loss runs on the ISM. Synthesis boosts the clean pass; the Mixup
  passes use the plain ISM pair loss.

``task="classification"`` (§1.4): label-mixed cross-entropy (Mixup / CutMix / none) on the
introspective logits (``idml``) or the plain logits (``baseline``).

Every random quantity of a step comes from :func:`step_draws` (one key per step), so a
test can hand the same draws to a reference implementation. With ``model.batch_norm=
"train"`` the model outputs carry the updated ``batch_stats`` (of the clean pass); they
come back in ``aux``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from idml_jax import iaa, losses, mixing, similarity
from idml_jax.config import uses_iaa, uses_idml
from idml_jax.data import transforms
from idml_jax.ops import l2_normalize


def step_draws(config: ml_collections.ConfigDict, key: jax.Array, batch_size: int,
               image_size: int) -> dict[str, jax.Array]:
  """Every random draw of one step: Mixup's ``lam`` and ``perm`` [B] (IDML), the synthesis
  ``noise`` [M, B, D] (IAA), or :func:`mixing.draw`'s (classification); ``color``
  (:func:`transforms.color_draws`) with colour jitter or lighting."""
  k_mix, k_syn, k_color = jax.random.split(key, 3)
  out = {}
  if config.data.color_jitter or config.data.lighting:
    out["color"] = transforms.color_draws(k_color, batch_size, config.data.color_jitter,
                                          config.data.lighting)
  if config.task == "classification":
    cfg = config.classification
    return {**out, **mixing.draw(k_mix, cfg.mixing, batch_size, image_size, image_size,
                                 alpha=cfg.alpha, prob=cfg.cutmix_prob)}
  if uses_idml(config.method) and config.idml.mixup:
    out |= mixing.draw(k_mix, "mixup", batch_size, image_size, image_size,
                      alpha=config.idml.mixup_alpha)
  if uses_iaa(config.method):
    out["noise"] = iaa.synthesis_noise(k_syn, config.iaa.num_synthetic, batch_size,
                                       config.model.embedding_dim)
  return out


def _ism_inputs(config: ml_collections.ConfigDict, mu: jax.Array) -> jax.Array:
  """The semantic embeddings the ISM's distance ``dmu`` is computed from."""
  return l2_normalize(mu) if config.idml.semantic_distance == "normalized" else mu


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
  ism = dict(a=config.idml.a, b=config.idml.b)
  if name in losses.PROXY_LOSSES:
    sim = similarity.introspective_similarity(_ism_inputs(config, mu), u, proxies, **ism)
    return loss_fn(sim, labels, **kwargs)
  cand_mu, cand_u, cand_y, source = mu, u, labels, None
  if synthetic is not None:
    z_syn, y_syn, m = synthetic
    cand_mu = jnp.concatenate([mu, z_syn])
    cand_u = None if u is None else jnp.concatenate([u, jnp.tile(u, (m, 1))])
    cand_y = jnp.concatenate([labels, y_syn])
    source = losses.synthetic_source(mu.shape[0], m)
  sim = similarity.introspective_similarity(_ism_inputs(config, mu), u,
                                            _ism_inputs(config, cand_mu), cand_u, **ism)
  pos, neg = losses.pair_masks(labels, cand_y, candidate_ids=source)
  return loss_fn(sim, pos, neg, **kwargs)


def _ism_diagnostics(config: ml_collections.ConfigDict, out: dict,
                     proxies: jax.Array | None) -> dict[str, jax.Array]:
  """Mean ||u|| and the distribution (mean, 10th, 90th percentile) of the introspective
  factor of the clean pass: near 1 the ISM is the cosine, near 0 it is saturated."""
  mu, u = _ism_inputs(config, out["semantic"]), out["uncertainty"]
  if proxies is not None and config.loss.name in losses.PROXY_LOSSES:
    factor = similarity.introspective_factor(mu, u, proxies, a=config.idml.a, b=config.idml.b)
  else:
    factor = similarity.introspective_factor(mu, u, mu, u, a=config.idml.a, b=config.idml.b)
    # The diagonal (an image with itself) is 0 by construction: left out.
    factor = jnp.where(jnp.eye(mu.shape[0], dtype=bool), jnp.nan, factor)
  p10, p90 = jnp.nanquantile(factor.reshape(-1), jnp.asarray([0.1, 0.9]))
  return {"uncertainty_norm": jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1)),
          "ism_factor_mean": jnp.nanmean(factor), "ism_factor_p10": p10, "ism_factor_p90": p90}


def total_loss(config: ml_collections.ConfigDict, apply_fn, params, images: jax.Array,
               labels: jax.Array, draws: dict, stats: iaa.ClassStats | None,
               strength: jax.Array, synthesize: bool) -> tuple[jax.Array, dict]:
  """The method's loss for one batch of normalised images [B, H, W, 3] and its draws."""
  if config.task == "classification":
    return classification_loss(config, apply_fn, params, images, labels, draws)
  out = apply_fn(params["model"], images)
  proxies = params.get("proxies")
  synthetic = None
  if synthesize:
    m = config.iaa.num_synthetic
    z_syn, y_syn = iaa.synthesize(draws["noise"], out["semantic"], labels,
                                  stats.synthesis_covariance, lam=strength,
                                  root=config.iaa.synthesis_root)
    synthetic = (z_syn, y_syn, m)
  loss = loss_on_embeddings(config, out, labels, proxies, synthetic)
  aux = {"loss_clean": loss, **_batch_stats(out)}
  if uses_idml(config.method):
    aux.update(_ism_diagnostics(config, out, proxies))
    if config.idml.mixup:
      lam, perm = draws["lam"], draws["perm"]
      mixed = apply_fn(params["model"], lam * images + (1 - lam) * images[perm])
      loss = (loss + lam * loss_on_embeddings(config, mixed, labels, proxies)
              + (1 - lam) * loss_on_embeddings(config, mixed, labels[perm], proxies))
  return loss, aux


def _batch_stats(out: dict) -> dict:
  return {"batch_stats": out["batch_stats"]} if "batch_stats" in out else {}


def classification_loss(config: ml_collections.ConfigDict, apply_fn, params, images: jax.Array,
                        labels: jax.Array, draws: dict) -> tuple[jax.Array, dict]:
  """Label-mixed cross-entropy ``lam CE(out, y) + (1 - lam) CE(out, y[perm])`` (§1.4).

  ``out`` = introspective logits for ``idml``, plain logits for ``baseline``; without mixing
  ``lam = 1``. ``aux`` has the training accuracy (plain logits, unmixed labels) and lam.
  """
  images, lam = mixing.mix(images, draws, config.classification.mixing)
  out = apply_fn(params["model"], images)
  logits = out["introspective_logits"] if uses_idml(config.method) else out["logits"]
  loss = mixing.mixed_cross_entropy(logits, labels, lam, draws["perm"])
  aux = {"accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == labels), "lam": lam,
         **_batch_stats(out)}
  if uses_idml(config.method):
    aux["uncertainty_norm"] = jnp.mean(jnp.linalg.norm(out["uncertainty"], axis=-1))
  return loss, aux
