"""The two-headed embedding model of IDML (docs/algorithms.md §1.1) and the ISM classifier (§1.4).

``EmbeddingModel``: backbone feature map F -> h = pool(F) (GAP + GMP by default) -> a
semantic head ``mu = W_s h + b_s`` and, for IDML, an uncertainty head ``u = act(W_u h + b_u)``.
The semantic head is initialised Kaiming-normal (fan-out), bias 0, as both official codes do.

``ClassifierModel``: backbone -> GAP -> h; logits ``z = h W (+ b)`` and, for ISM, an
uncertainty branch ``relu(W_u h)``; returns plain and introspective logits.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from idml_jax import names, similarity
from idml_jax.ops import l2_normalize

HEAD_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int):
  """PyTorch's ``nn.Linear`` initialisation of its weight and bias: U(±1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def _torch_linear(features: int, fan_in: int, name: str, use_bias: bool = True) -> nn.Dense:
  init = torch_linear_init(fan_in)
  return nn.Dense(features, kernel_init=init, bias_init=init, use_bias=use_bias, name=name)


# ``model.uncertainty_init`` -> (features, fan_in, name, use_bias) -> the uncertainty head.
UNCERTAINTY_INITS: dict[str, Callable[..., nn.Dense]] = {
    "kaiming": lambda features, fan_in, name, use_bias=True: nn.Dense(
        features, kernel_init=HEAD_INIT, use_bias=use_bias, name=name),
    "torch": _torch_linear,  # The official IDML code leaves its uncertainty head at this.
    "small": lambda features, fan_in, name, use_bias=True: nn.Dense(  # Kaiming / 100:
        features, kernel_init=nn.initializers.variance_scaling(2e-4, "fan_out", "normal"),
        use_bias=use_bias, name=name),  # ||u||² starts ~1e-4× Kaiming's.
}
# ``model.uncertainty_input``: the uncertainty head reads the pooled features h as they are,
# or their L2-normalised copy (then ||u|| is bounded by the head's weights, whatever the
# features' scale).
UNCERTAINTY_INPUTS = ("features", "normalized_features")


def _tanh_bounded(r: jax.Array) -> jax.Array:
  """``r`` [..., D] rescaled to the norm ``tanh(||r||)`` < 1, its direction kept."""
  sq = jnp.sum(jnp.square(r), axis=-1, keepdims=True)
  safe = jnp.sqrt(jnp.where(sq > 1e-12, sq, 1.0))
  return r * jnp.where(sq > 1e-12, jnp.tanh(safe) / safe, 1.0)  # tanh(n)/n -> 1 at n -> 0


def relu_bounded(x: jax.Array) -> jax.Array:
  """``relu(x)`` rescaled to the norm ``tanh(||relu(x)||)`` < 1 (direction kept) [..., D].

  Non-negative like ReLU, and on the official code's scale (its u has norm exactly 1) while
  keeping a gradient: du = ||u_a||² + ||u_b||² < 2 against a = 4, so the uncertainty cannot
  drive the ISM's factor to 0 (BENCHMARKS.md measures where the factor lives in training).
  A unit whose input stays negative is dead: ||u|| can reach exactly 0 for every image.
  """
  return _tanh_bounded(jax.nn.relu(x))


def softplus_bounded(x: jax.Array) -> jax.Array:
  """``softplus(x)`` rescaled to the norm ``tanh(||softplus(x)||)`` < 1 [..., D]: the smooth
  relu_bounded, positive everywhere, so no unit dies and ||u|| never reaches 0."""
  return _tanh_bounded(jax.nn.softplus(x))


# raw head output [..., D] -> u. "l2_normalize" is the official IDML retrieval code: ||u||² = 1
# for every image, so the head gets no gradient.
UNCERTAINTY_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
    "l2_normalize": l2_normalize,
    "relu_bounded": relu_bounded,
    "softplus_bounded": softplus_bounded,
}

# [B, H, W, C] -> [B, C].
POOLINGS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "avg+max": lambda f: jnp.mean(f, axis=(1, 2)) + jnp.max(f, axis=(1, 2)),  # IDML, IAA
    "avg": lambda f: jnp.mean(f, axis=(1, 2)),
    "max": lambda f: jnp.max(f, axis=(1, 2)),
}


def uncertainty_embedding(raw: jax.Array, activation: str = "relu") -> jax.Array:
  """The uncertainty head's raw output [..., D] -> the uncertainty embedding ``u``."""
  return names.lookup(UNCERTAINTY_ACTIVATIONS, activation, "uncertainty activation")(raw)


def pool_features(feature_map: jax.Array, pooling: str = "avg+max") -> jax.Array:
  """[B, H, W, C] -> [B, C]: ``avg+max`` (GAP + GMP), ``avg`` or ``max``. [B, C] (a ViT,
  which pools itself: ``model.pooling`` = token | avg) is returned as it is."""
  if feature_map.ndim == 2:
    return feature_map
  return names.lookup(POOLINGS, pooling, "pooling")(feature_map)


class EmbeddingModel(nn.Module):
  """Images [B, H, W, 3] -> {"features": h [B, F], "semantic": mu [B, D], "uncertainty": u}.

  ``uncertainty`` is [B, D] when the uncertainty head is on, else absent. ``head_bias``:
  both heads with a bias (the papers' code) or linear without one (ViT DML: Hyp-ViT, HIER).
  """

  backbone: nn.Module
  embedding_dim: int = 512
  uncertainty: bool = True
  # The defaults of model.* in idml_jax/config.py (one source): u = relu(W_u h-hat) bounded
  # to ||u|| < 1 (BENCHMARKS.md); "l2_normalize" on "features" is the official code.
  uncertainty_activation: str = "relu_bounded"
  uncertainty_init: str = "kaiming"
  uncertainty_input: str = "normalized_features"
  pooling: str = "avg+max"
  head_bias: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    h = pool_features(self.backbone(images), self.pooling).astype(jnp.float32)
    out = {"features": h,
           "semantic": nn.Dense(self.embedding_dim, kernel_init=HEAD_INIT,
                                use_bias=self.head_bias, name="semantic")(h)}
    if self.uncertainty:
      head = names.lookup(UNCERTAINTY_INITS, self.uncertainty_init, "uncertainty init")
      h_u = l2_normalize(h) if self.uncertainty_input == "normalized_features" else h
      raw = head(self.embedding_dim, h.shape[-1], "uncertainty", self.head_bias)(h_u)
      out["uncertainty"] = uncertainty_embedding(raw, self.uncertainty_activation)
    return out


class ClassifierModel(nn.Module):
  """Images [B, H, W, 3] -> {"features": h [B, F], "logits": z [B, C]} and, with
  ``uncertainty``, {"introspective_logits": zI [B, C], "uncertainty": u [B, U]}.

  ``z_c = w_c · h (+ b_c)``: the classifier's columns act as proxies (with ``bias``, the
  official code's ``fc(I)``: column plus bias). ``u = relu(W_u h)``, ``zI`` the ISM of §1.4
  with ``a``, ``b``; train on ``zI``, test on ``z``. The baseline (``uncertainty=False``)
  is the same linear classifier without the branch.
  """

  backbone: nn.Module
  num_classes: int
  uncertainty: bool = True
  uncertainty_dim: int = 512
  uncertainty_init: str = "kaiming"
  bias: bool = False
  a: float = 0.0
  b: float = 5.0

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    h = pool_features(self.backbone(images), "avg").astype(jnp.float32)
    fan_in = h.shape[-1]
    if self.bias:  # nn.Linear's default initialisation, as the official classifier.
      kernel = self.param("classifier", torch_linear_init(fan_in), (fan_in, self.num_classes))
      bias = self.param("classifier_bias", torch_linear_init(fan_in), (self.num_classes,))
    else:
      kernel = self.param("classifier", nn.initializers.lecun_normal(), (fan_in, self.num_classes))
      bias = None
    if not self.uncertainty:
      return {"features": h, "logits": h @ kernel + (0.0 if bias is None else bias)}
    head = names.lookup(UNCERTAINTY_INITS, self.uncertainty_init, "uncertainty init")
    u = nn.relu(head(self.uncertainty_dim, fan_in, "uncertainty")(h))
    logits, intro = similarity.introspective_logits(h, kernel, u, bias, a=self.a, b=self.b)
    return {"features": h, "logits": logits, "introspective_logits": intro, "uncertainty": u}
