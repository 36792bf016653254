"""PyTorch re-implementations of the official training steps, for step-parity tests.

Written from reading wzzheng/IDML and darkpromise98/IAA: each module reproduces what one
official training step does (model heads, loss, optimiser groups, warm-up, clipping,
schedules, estimator updates), with the step's random draws passed in, so the same draws
can be handed to idml_jax.
"""
