"""Step parity: the ``official`` variants' training steps equal the official code's.

The same initial weights (a random torch network through idml_jax's converter), the same
batches and the same random draws (Mixup's lam and permutation, the synthesis noise, CutMix's
box) go into idml_jax's jitted step and into a PyTorch re-implementation of the official
step (tests/reference/). Several optimizer steps cross the warm-up → training boundary and a
learning-rate decay; losses, parameters of every group, proxies, optimizer moments and IAA
statistics must agree to float32 tolerance.
"""

import flax
import jax
import numpy as np
import optax
import pytest
from conftest import load_config

from idml_jax.models import convert
from idml_jax.train.steps import Steps, make_mesh, to_global

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("torch_reference")
from reference import idml_retrieval  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
B, D, C, SIZE = 8, 16, 4, 32


def _images(seed, n=B):
  return np.random.default_rng(seed).integers(0, 255, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _to_torch(images):
  x = (images.astype(np.float32) / 255 - MEAN) / STD
  return torch.tensor(np.transpose(x, (0, 3, 1, 2)), dtype=torch.float32)


def _backbone_variables(net):
  return convert.convert({k: _numpy(v) for k, v in net.state_dict().items()
                          if not k.startswith(("embedding", "uncertainty"))}, "resnet_tiny")


def _numpy(t):
  """A copy (torch's optimiser updates its tensors in place; a view would follow them)."""
  return np.array(t.detach().numpy(), copy=True)


def _dense(linear):
  return {"kernel": _numpy(linear.weight).T, "bias": _numpy(linear.bias)}


def _flax_module(name):
  """``layer1.0.downsample.0.weight`` -> (``("layer1_0", "downsample_0")``, ``"weight"``)."""
  parts = name.split(".")
  if parts[0].startswith("layer"):
    return (f"{parts[0]}_{parts[1]}", "_".join(parts[2:-1])), parts[-1]
  return tuple(parts[:-1]), parts[-1]


def _compare_backbone(params, net, what):
  """Every torch backbone parameter against its Flax twin (OIHW -> HWIO, BN weight -> scale)."""
  flat = flax.traverse_util.flatten_dict(params)
  for name, p in net.named_parameters():
    if name.startswith(("embedding", "uncertainty", "fc")):
      continue
    module, leaf = _flax_module(name)
    value = _numpy(p)
    if value.ndim == 4:
      got = np.transpose(np.asarray(flat[module + ("kernel",)]), (3, 2, 0, 1))
    else:  # BatchNorm's weight and bias.
      got = np.asarray(flat[module + ({"weight": "scale", "bias": "bias"}[leaf],)])
    np.testing.assert_allclose(got, value, rtol=2e-5, atol=2e-6, err_msg=f"{what}: {name}")


def _adam_moments(opt_state, group: str):
  """The (mu, nu) pytrees of ``group``'s Adam state in a multi_transform state."""
  found = []

  def visit(x):
    if isinstance(x, optax.ScaleByAdamState):
      found.append(x)
      return
    if isinstance(x, (tuple, list)):
      for y in x:
        visit(y)
    elif hasattr(x, "_fields"):
      for y in x:
        visit(y)
    elif hasattr(x, "inner_state"):
      visit(x.inner_state)
    elif hasattr(x, "inner"):
      visit(x.inner)

  visit(opt_state.inner_states[group])
  assert len(found) == 1, found
  return found[0]


# ----------------------------------------------------------------------------- IDML-PA


def _idml_config():
  c = load_config("idml_pa.py", "cub,official,runlocal")
  c.model.embedding_dim = D
  c.data.image_size = c.data.resize_size = SIZE
  c.batch_size = B
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_epochs = 1
  c.optimizer.decay_epochs = 1  # StepLR(step_size=1): the lr halves after every epoch.
  c.optimizer.gamma = 0.5
  return c


def test_idml_pa_official_steps_equal_the_official_code():
  steps_per_epoch, num_steps = 2, 5  # Warm-up epoch 0, then two epochs (two lr decays).
  c = _idml_config()
  torch.manual_seed(0)
  net = torch_reference.resnet_tiny()
  torch_reference.randomize_batch_norm(net)
  model = idml_retrieval.Model(net, net.num_features, D)
  criterion = idml_retrieval.ProxyAnchor(C, D)
  trainer = idml_retrieval.Trainer(model, criterion, lr=1e-3, weight_decay=1e-4, decay_step=1,
                                   gamma=0.5, warm=1, steps_per_epoch=steps_per_epoch)

  steps = Steps.build(c, C, steps_per_epoch, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  backbone = _backbone_variables(net)
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"]["backbone"] = backbone["params"]
  params["model"]["semantic"] = _dense(net.embedding)
  params["model"]["uncertainty"] = _dense(net.uncertainty)
  params["proxies"] = _numpy(criterion.proxies)
  state = state.replace(params=jax.tree.map(np.float32, params),
                        batch_stats={"backbone": backbone["batch_stats"]},
                        opt_state=steps.tx.init(jax.tree.map(np.float32, params)))
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 1], np.int32)
  for step in range(num_steps):
    images = _images(step)
    draws = jax.device_get(steps.draws(step, B))
    want = trainer.step(_to_torch(images), torch.tensor(labels, dtype=torch.long),
                        float(draws["lam"]), torch.tensor(np.asarray(draws["perm"])))
    batch = to_global(steps.mesh, {"image": images, "label": labels})
    state, metrics = steps.train_step(state, batch, 0.0, synthesize=False,
                                      train_backbone=step >= steps_per_epoch)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5), f"loss, step {step}"
    p = jax.device_get(state.params)
    _compare_backbone(p["model"]["backbone"], net, f"step {step}")
    for leaf, value in _dense(net.embedding).items():
      np.testing.assert_allclose(p["model"]["semantic"][leaf], value, rtol=2e-5, atol=2e-6,
                                 err_msg=f"step {step} semantic {leaf}")
    if step < steps_per_epoch:  # Frozen with the backbone during the warm-up, in both.
      for leaf, value in _dense(net.uncertainty).items():
        np.testing.assert_array_equal(p["model"]["uncertainty"][leaf], value)
    else:  # ||u|| = 1: the head's gradient is zero up to rounding (which Adam then amplifies
      # into arbitrary ±lr steps, in both frameworks alike).
      assert float(net.uncertainty.weight.grad.abs().max()) < 1e-6
    np.testing.assert_allclose(p["proxies"], _numpy(criterion.proxies), rtol=2e-5,
                               atol=2e-6, err_msg=f"step {step} proxies")
  # Adam's moments: the proxies' (trained every step) and the backbone's (fresh after warm-up).
  torch_state = trainer.opt.state
  proxies = _adam_moments(state.opt_state, "proxies")
  np.testing.assert_allclose(proxies.mu["proxies"], torch_state[criterion.proxies]["exp_avg"],
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(proxies.nu["proxies"], torch_state[criterion.proxies]["exp_avg_sq"],
                             rtol=1e-4, atol=1e-9)
  backbone_adam = _adam_moments(state.opt_state, "backbone")
  assert int(backbone_adam.count) == num_steps - steps_per_epoch  # Fresh after the warm-up.
  assert int(torch_state[net.conv1.weight]["step"]) == num_steps - steps_per_epoch
