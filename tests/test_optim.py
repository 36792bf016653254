"""The optimisers step for step against torch.optim: groups, warm-up, clipping, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny

from idml_jax.optim import frozen_until, make_optimizer

torch = pytest.importorskip("torch")

STEPS_PER_EPOCH = 3


def _params(rng):
  return {"model": {"backbone": {"conv": {"kernel": rng.standard_normal((4, 3))}},
                    "semantic": {"kernel": rng.standard_normal((3, 2))},
                    "uncertainty": {"kernel": rng.standard_normal((3, 2))}},
          "proxies": rng.standard_normal((5, 2))}


def _torch_run(params, grads, name, lr, wd, warm_steps, clip, gamma, uncertainty_in_backbone,
               nesterov=False):
  """The official loops: param groups (backbone [+ uncertainty head] at lr, semantic head at
  lr, proxies at 100 lr), requires_grad=False on the backbone for the warm-up, clipping by
  value, StepLR stepped once per epoch."""
  t = {k: torch.tensor(np.float32(v), requires_grad=True) for k, v in [  # float32, as on GPUs.
      ("backbone", params["model"]["backbone"]["conv"]["kernel"]),
      ("semantic", params["model"]["semantic"]["kernel"]),
      ("uncertainty", params["model"]["uncertainty"]["kernel"]), ("proxies", params["proxies"])]}
  backbone = [t["backbone"]] + ([t["uncertainty"]] if uncertainty_in_backbone else [])
  head = [t["semantic"]] + ([] if uncertainty_in_backbone else [t["uncertainty"]])
  groups = [{"params": backbone}, {"params": head}, {"params": [t["proxies"]], "lr": lr * 100}]
  opt = {"adamw": lambda: torch.optim.AdamW(groups, lr=lr, weight_decay=wd),
         "adam": lambda: torch.optim.Adam(groups, lr=lr, weight_decay=wd),
         "sgd": lambda: torch.optim.SGD(groups, lr=lr, weight_decay=wd, momentum=0.9,
                                        nesterov=nesterov)}[name]()
  sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
  out = []
  for step, g in enumerate(grads):
    frozen = step < warm_steps
    for p in backbone:
      p.requires_grad_(not frozen)
    opt.zero_grad()
    for key, p in t.items():
      if p.requires_grad:
        p.grad = torch.tensor(np.float32(g[key]))
    torch.nn.utils.clip_grad_value_([p for p in t.values() if p.requires_grad], clip)
    opt.step()
    if (step + 1) % STEPS_PER_EPOCH == 0:
      sched.step()
    out.append({k: v.detach().numpy().copy() for k, v in t.items()})
  return out


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("uncertainty_in_backbone", [False, True])
def test_steps_equal_torch_across_the_warm_up_and_a_decay(name, uncertainty_in_backbone):
  rng = np.random.default_rng(0)
  params = _params(rng)
  n = 4 * STEPS_PER_EPOCH  # Warm-up of 2 epochs, then 2 more; the lr halves every epoch.
  grads = [{k: rng.standard_normal(s) * 30 for k, s in [  # Some beyond the clip value.
      ("backbone", (4, 3)), ("semantic", (3, 2)), ("uncertainty", (3, 2)), ("proxies", (5, 2))]}
      for _ in range(n)]
  c = tiny(method="idml", loss="proxy_anchor", model__batch_norm="frozen",
           optimizer__name=name, optimizer__lr=1e-2, optimizer__weight_decay=1e-2,
           optimizer__warmup_epochs=2, optimizer__clip_value=10.0, optimizer__schedule="step",
           optimizer__decay_epochs=1, optimizer__gamma=0.5, optimizer__proxy_lr_mult=100.0,
           optimizer__nesterov=name == "sgd",
           optimizer__uncertainty_head_group="backbone" if uncertainty_in_backbone else "head")
  want = _torch_run(params, grads, name, 1e-2, 1e-2, 2 * STEPS_PER_EPOCH, 10.0, 0.5,
                    uncertainty_in_backbone, nesterov=True)
  tx = make_optimizer(c, params, STEPS_PER_EPOCH, batch_norm="train")
  p = jax.tree.map(jnp.float32, params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  previous = {"backbone": params["model"]["backbone"]["conv"]["kernel"],
              "semantic": params["model"]["semantic"]["kernel"],
              "uncertainty": params["model"]["uncertainty"]["kernel"], "proxies": params["proxies"]}
  for step, g in enumerate(grads):
    g = {"model": {"backbone": {"conv": {"kernel": g["backbone"]}},
                   "semantic": {"kernel": g["semantic"]},
                   "uncertainty": {"kernel": g["uncertainty"]}}, "proxies": g["proxies"]}
    updates, state = update(jax.tree.map(jnp.float32, g), state, p)
    p = optax.apply_updates(p, updates)
    got = {"backbone": p["model"]["backbone"]["conv"]["kernel"],
           "semantic": p["model"]["semantic"]["kernel"],
           "uncertainty": p["model"]["uncertainty"]["kernel"], "proxies": p["proxies"]}
    for key, value in got.items():
      # Each update equal to torch's to 1e-5 of its size, every step (plus the float32 ulps
      # of the parameters the updates are read off).
      delta, ref = np.asarray(value) - previous[key], want[step][key] - previous[key]
      ulps = 4 * np.spacing(np.float32(np.abs(previous[key]).max()))
      assert np.abs(delta - ref).max() <= 1e-5 * np.abs(ref).max() + ulps, \
          f"{name} step {step} {key}"
      previous[key] = want[step][key]
      p = _set(p, key, want[step][key])  # Compare each step from the same point.


def _set(p, key, value):
  p = jax.tree.map(lambda x: x, p)
  if key == "proxies":
    p["proxies"] = jnp.float32(value)
  elif key == "backbone":
    p["model"]["backbone"]["conv"]["kernel"] = jnp.float32(value)
  else:
    p["model"][key]["kernel"] = jnp.float32(value)
  return p


def test_frozen_until_keeps_the_inner_state_still():
  inner = optax.scale_by_adam()
  tx = frozen_until(inner, 2)
  p = jnp.ones(3)
  state = tx.init(p)
  for _ in range(2):
    u, state = tx.update(jnp.full(3, 5.0), state, p)
    assert np.all(np.asarray(u) == 0)
  assert int(state.inner.count) == 0 and np.all(np.asarray(state.inner.mu) == 0)
  u, state = tx.update(jnp.full(3, 5.0), state, p)
  fresh, _ = inner.update(jnp.full(3, 5.0), inner.init(p), p)
  np.testing.assert_array_equal(u, fresh)  # Adam's step 1.


@pytest.mark.parametrize("backbone, setting, pretrained, want", [
    ("resnet_tiny", "auto", "weights/", "frozen"),  # auto over weights = frozen (the papers).
    ("resnet_tiny", "auto", "", "backbone"),  # auto from scratch = trained.
    ("resnet_tiny", "frozen_stats", "weights/", "backbone"),
    ("resnet_tiny", "frozen", "", "frozen"),
    ("vit_tiny", "frozen", "weights/", "backbone"),  # LayerNorm is not BatchNorm.
])
def test_batch_norm_scale_and_shift_follow_the_resolved_mode(backbone, setting, pretrained,
                                                            want):
  from idml_jax.config import batch_norm_mode
  from idml_jax.optim import param_labels
  from idml_jax.train.state import make_model
  c = tiny(method="idml", model__backbone=backbone, model__batch_norm=setting)
  c.model.pretrained = pretrained
  if backbone.startswith("vit"):
    c.model.pooling = "token"
  from idml_jax.tasks import get_task
  params = jax.eval_shape(lambda: make_model(get_task(c)).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))["params"]
  labels = param_labels({"model": params, "proxies": jnp.zeros((5, 16))}, c,
                        batch_norm_mode(c))
  flat = jax.tree_util.tree_flatten_with_path(labels["model"]["backbone"])[0]
  norms = {lab for path, lab in flat if "scale" in jax.tree_util.keystr(path)}
  assert norms == {want}
