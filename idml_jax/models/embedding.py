"""The two-headed embedding model of IDML (ALGORITHMS.md §1.1) and the ISM classifier (§1.4).

``EmbeddingModel``: backbone feature map F -> h = GAP(F) + GMP(F) -> a semantic head
``mu = W_s h + b_s`` and, for IDML, an uncertainty head ``u = act(W_u h + b_u)``. Heads
are initialised Kaiming-normal (fan-out), biases 0. Non-IDML methods (plain IAA,
baselines) build it with ``uncertainty=False``.

``ClassifierModel``: backbone -> GAP -> h; logits ``z = h W`` and, for ISM, an uncertainty
branch ``relu(W_u h)``; returns plain and introspective logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from idml_jax import similarity

HEAD_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def pool_features(feature_map: jax.Array, pooling: str = "avg+max") -> jax.Array:
  """[B, H, W, C] -> [B, C]: ``avg+max`` (IDML, IAA: GAP + GMP), ``avg`` or ``max``."""
  if pooling == "avg+max":
    return jnp.mean(feature_map, axis=(1, 2)) + jnp.max(feature_map, axis=(1, 2))
  if pooling == "avg":
    return jnp.mean(feature_map, axis=(1, 2))
  if pooling == "max":
    return jnp.max(feature_map, axis=(1, 2))
  raise ValueError(f"Unknown pooling {pooling!r}; valid: avg+max, avg, max.")


class EmbeddingModel(nn.Module):
  """Images [B, H, W, 3] -> {"features": h [B, F], "semantic": mu [B, D], "uncertainty": u}.

  ``uncertainty`` is [B, D] when the uncertainty head is on, else absent.
  """

  backbone: nn.Module
  embedding_dim: int = 512
  uncertainty: bool = True
  uncertainty_activation: str = "relu"
  pooling: str = "avg+max"

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    h = pool_features(self.backbone(images), self.pooling).astype(jnp.float32)
    out = {"features": h,
           "semantic": nn.Dense(self.embedding_dim, kernel_init=HEAD_INIT, name="semantic")(h)}
    if self.uncertainty:
      raw = nn.Dense(self.embedding_dim, kernel_init=HEAD_INIT, name="uncertainty")(h)
      out["uncertainty"] = similarity.uncertainty_embedding(raw, self.uncertainty_activation)
    return out


class ClassifierModel(nn.Module):
  """Images [B, H, W, 3] -> {"features": h [B, F], "logits": z [B, C]} and, with
  ``uncertainty``, {"introspective_logits": zI [B, C], "uncertainty": u [B, U]}.

  ``z_c = w_c · h`` (no bias, the classifier's columns act as proxies), ``u = relu(W_u h)``,
  ``zI`` the ISM of §1.4 with ``a``, ``b``; train on ``zI``, test on ``z``. The baseline
  (``uncertainty=False``) is the same linear classifier without the branch.
  """

  backbone: nn.Module
  num_classes: int
  uncertainty: bool = True
  uncertainty_dim: int = 512
  a: float = 0.0
  b: float = 5.0

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    h = pool_features(self.backbone(images), "avg").astype(jnp.float32)
    kernel = self.param("classifier", nn.initializers.lecun_normal(),
                        (h.shape[-1], self.num_classes))
    if not self.uncertainty:
      return {"features": h, "logits": h @ kernel}
    u = nn.relu(nn.Dense(self.uncertainty_dim, kernel_init=HEAD_INIT, name="uncertainty")(h))
    logits, intro = similarity.introspective_logits(h, kernel, u, self.a, self.b)
    return {"features": h, "logits": logits, "introspective_logits": intro, "uncertainty": u}
