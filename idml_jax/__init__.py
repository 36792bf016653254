"""idml_jax: Introspective Deep Metric Learning and Intra-class Adaptive Augmentation in JAX."""

__version__ = "0.1.0"
