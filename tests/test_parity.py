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


def _backbone_variables(net, name="resnet_tiny"):
  return convert.convert({k: _numpy(v) for k, v in net.state_dict().items()
                          if not k.startswith(("embedding", "uncertainty"))}, name)


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


_HEADS = ("embedding", "uncertainty", "fc")  # Torch modules that are not the backbone.


def _torch_backbone_vector(net) -> np.ndarray:
  """[P] float64: a torch backbone's parameters (its heads left out) in the order of
  :func:`_flax_backbone_vector` (OIHW kernels as HWIO)."""
  parts = []
  for name, p in net.named_parameters():
    if not name.startswith(_HEADS):
      v = p.detach().double().numpy()
      parts.append(np.transpose(v, (2, 3, 1, 0)).ravel() if v.ndim == 4 else v.ravel())
  return np.concatenate(parts)


def _flax_twin(flat: dict, name: str) -> np.ndarray:
  """The Flax array (of ``flatten_dict``'s ``flat``) of torch parameter ``name``: a conv's
  ``weight`` is its ``kernel`` (HWIO), BatchNorm's ``weight`` its ``scale``."""
  module, leaf = _flax_module(name)
  if leaf == "weight" and module + ("kernel",) in flat:
    return np.asarray(flat[module + ("kernel",)])
  return np.asarray(flat[module + ({"weight": "scale", "bias": "bias"}[leaf],)])


def _flax_backbone_vector(params, net) -> np.ndarray:
  """[P] float64: our backbone ``params`` (converted from ``net``) in ``net``'s order."""
  flat = flax.traverse_util.flatten_dict(params)
  return np.concatenate([_flax_twin(flat, name).astype(np.float64).ravel()
                         for name, _ in net.named_parameters() if not name.startswith(_HEADS)])


def _compare_backbone(params, net, what, atol=2e-6):
  """Every torch backbone parameter against its Flax twin (OIHW -> HWIO, BN weight -> scale)."""
  flat = flax.traverse_util.flatten_dict(params)
  for name, p in net.named_parameters():
    if name.startswith(_HEADS):
      continue
    value, got = _numpy(p), _flax_twin(flat, name)
    if value.ndim == 4:  # HWIO -> OIHW.
      got = np.transpose(got, (3, 2, 0, 1))
    np.testing.assert_allclose(got, value, rtol=2e-5, atol=atol, err_msg=f"{what}: {name}")


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
  c.optimizer.clip_value = CLIP
  return c


CLIP = 0.05  # The official 10 never binds on this tiny problem; 0.05 clips many gradients.


def test_idml_pa_official_steps_equal_the_official_code():
  steps_per_epoch, num_steps = 2, 5  # Warm-up epoch 0, then two epochs (two lr decays).
  c = _idml_config()
  torch.manual_seed(0)
  net = torch_reference.resnet_tiny()
  torch_reference.randomize_batch_norm(net)
  model = idml_retrieval.Model(net, net.num_features, D)
  criterion = idml_retrieval.ProxyAnchor(C, D)
  trainer = idml_retrieval.Trainer(model, criterion, lr=1e-3, weight_decay=1e-4, decay_step=1,
                                   gamma=0.5, warm=1, steps_per_epoch=steps_per_epoch, clip=CLIP)

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
  clipped = 0
  for step in range(num_steps):
    images = _images(step)
    draws = jax.device_get(steps.draws(step, B))
    want = trainer.step(_to_torch(images), torch.tensor(labels, dtype=torch.long),
                        float(draws["lam"]), torch.tensor(np.asarray(draws["perm"])))
    clipped += int(sum((p.grad.abs() >= CLIP).sum() for p in criterion.parameters()))
    batch = to_global(steps.mesh, {"image": images, "label": labels})
    state, metrics = steps.train_step(state, batch, steps.method.plan(step // steps_per_epoch),
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
  assert clipped > 0  # The clipping is exercised.
  backbone_adam = _adam_moments(state.opt_state, "backbone")
  assert int(backbone_adam.count) == num_steps - steps_per_epoch  # Fresh after the warm-up.
  assert int(torch_state[net.conv1.weight]["step"]) == num_steps - steps_per_epoch


# ----------------------------------------------------------------------------- IAA


def _copy_backbone_and_head(steps, state, net, linear):
  backbone = _backbone_variables(net)
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"]["backbone"] = backbone["params"]
  params["model"]["semantic"] = _dense(linear)
  params = jax.tree.map(np.float32, params)
  return state.replace(params=params, batch_stats={"backbone": backbone["batch_stats"]},
                       opt_state=steps.tx.init(params))


@pytest.mark.parametrize("loss", ["ms", "contrastive"])
def test_iaa_official_steps_and_estimates_equal_the_official_code(loss):
  from reference import iaa as iaa_reference

  from idml_jax import iaa
  steps_per_epoch, epochs, start, every = 2, 4, 1, 2  # Estimates at epochs 2 and 4 (from 1).
  c = load_config("iaa.py", f"cub,{loss},official,runlocal")
  c.model.pooling = "avg+max"  # The official ResNet wrapper's GMP + GAP.
  c.model.embedding_dim = D
  c.data.image_size = c.data.resize_size = SIZE
  c.batch_size, c.num_epochs = B, epochs
  c.optimizer.lr, c.optimizer.boundaries = 1e-3, (2,)
  c.iaa.start_epoch, c.iaa.update_every, c.iaa.num_synthetic = start, every, 3
  torch.manual_seed(1)
  net = torch_reference.resnet_tiny()
  torch_reference.randomize_batch_norm(net, seed=1)
  model = iaa_reference.Embedding(net, net.num_features, D)
  estimator = iaa_reference.Estimator(C, D, momentum=c.iaa.momentum)
  trainer = iaa_reference.Trainer(
      model, estimator, {"ms": iaa_reference.multi_similarity,
                         "contrastive": iaa_reference.contrastive}[loss],
      lr=1e-3, weight_decay=c.optimizer.weight_decay, milestones=[2], gamma=c.optimizer.gamma,
      steps_per_epoch=steps_per_epoch, epochs=epochs, start_epoch=start, update_every=every,
      lamda=c.iaa.strength)
  steps = Steps.build(c, C, steps_per_epoch, make_mesh(jax.devices()[:1]))
  state = _copy_backbone_and_head(steps, steps.fresh_state(), net, model.linear)
  pool_images, pool_labels = _images(99, n=4 * C), np.repeat(np.arange(C), 4).astype(np.int32)
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
  estimates = 0
  for step in range(steps_per_epoch * epochs):
    epoch = step // steps_per_epoch
    ours_due = step % steps_per_epoch == 0 and steps.method.pass_due(epoch)
    assert ours_due == trainer.estimate_due()
    if ours_due:  # The estimate from a pass over the (here: a fixed) training set.
      with torch.no_grad():
        estimator.global_update(model(_to_torch(pool_images)), torch.tensor(pool_labels).long())
      emb = steps.embed(state, pool_images)["semantic"]
      state = state.replace(carry=steps.method.update(state.carry, emb, pool_labels))
      stats = state.carry["class_stats"]
      for ours, theirs in ((stats.mean, estimator.mean), (stats.covariance, estimator.covariance),
                           (stats.count, estimator.amount)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=2e-5, atol=1e-6)
      estimates += 1
    plan = steps.method.plan(epoch)  # The official schedule of synthesis and strength:
    assert dict(plan.static)["synthesize"] == (epoch >= start)
    assert plan.scalars["strength"] == (float(iaa.strength_schedule(c.iaa.strength, epoch, epochs))
                                        if epoch >= start else 0.0)
    draws = jax.device_get(steps.draws(step, B))
    images = _images(step)
    want = trainer.step(_to_torch(images), torch.tensor(labels).long(),
                        torch.tensor(np.asarray(draws["noise"])))
    state, metrics = steps.train_step(state, to_global(steps.mesh, {"image": images,
                                                                     "label": labels}),
                                      plan, train_backbone=True)
    assert float(metrics["loss"]) == pytest.approx(want, rel=2e-5, abs=1e-6), f"step {step}"
    p = jax.device_get(state.params)
    # The pair losses leave some weights a gradient at rounding level, which Adam's
    # per-element normalisation turns into steps of a sizeable fraction of lr in both
    # frameworks: parameters agree to 1 % of one step.
    _compare_backbone(p["model"]["backbone"], net, f"step {step}", atol=1e-2 * 1e-3)
    for leaf, value in _dense(model.linear).items():
      np.testing.assert_allclose(p["model"]["semantic"][leaf], value, rtol=2e-5, atol=1e-5,
                                 err_msg=f"step {step} head {leaf}")
  assert estimates == 2


def test_large_dataset_estimate_equals_update_each_class():
  from reference import iaa as iaa_reference

  from idml_jax import iaa
  rng = np.random.default_rng(0)
  c, d = 1100, 6  # More than 1000 classes: the official per-class path.
  ref = iaa_reference.Estimator(c, d)
  stats = iaa.init(c, d)
  for seed in range(2):
    y = rng.integers(0, c, 3000)
    y[:c] = np.arange(c)  # Every class present (update_each_class asserts it); some alone.
    z = rng.standard_normal((3000, d)).astype(np.float32) + seed
    ref.global_update(torch.tensor(z), torch.tensor(y))
    stats = iaa.merge(stats, z, y, momentum=0.2, skip_singletons=True)
  np.testing.assert_allclose(stats.mean, ref.mean.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.covariance, ref.covariance.numpy(), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats.count, ref.amount.numpy())


def test_official_synthesis_and_lambda_schedule_equal_the_official_functions():
  from reference import iaa as iaa_reference

  from idml_jax import iaa
  rng = np.random.default_rng(1)
  z, cov = rng.standard_normal((5, 4)).astype(np.float32), rng.random((3, 4)).astype(np.float32)
  y, noise = np.array([0, 1, 2, 0, 1]), rng.standard_normal((3, 5, 4)).astype(np.float32)
  want, want_y = iaa_reference.intra_synthesis(torch.tensor(z), torch.tensor(y), torch.tensor(cov),
                                               0.72, torch.tensor(noise))
  got, got_y = iaa.synthesize(noise, z, y, cov, lam=0.72, root="official")
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got_y, want_y.numpy())
  for epoch in range(100):
    assert float(iaa.strength_schedule(0.8, epoch, 100)) == pytest.approx(
        iaa_reference.lamda_epoch(0.8, 100, epoch + 1))


# ----------------------------------------------------------------------------- classification


def test_classification_official_steps_equal_the_official_code():
  from reference import idml_classification as ref
  steps_per_epoch, num_steps, classes = 2, 4, 5
  c = load_config("classification.py", "imagenet,idml_cutmix,official,runlocal")
  c.data.image_size = c.data.resize_size = SIZE
  c.batch_size = B
  # lr × 0.1 each epoch. (At the demo's 0.05, this tiny BatchNorm-trained net reaches, after
  # one step, parameters where its layer-3/4 gradient is hypersensitive: parameters equal to
  # 1e-7 give gradients 2 % apart, in either framework.)
  c.optimizer.lr, c.optimizer.boundaries = 0.005, (1, 2, 3)
  c.mixing.cutmix_prob = 0.5
  torch.manual_seed(2)
  net = torch_reference.resnet_tiny(small_images=True)
  model = ref.Classifier(net, net.num_features, classes, c.classification.uncertainty_dim)
  model.train()  # BatchNorm trains, as in the official loop.
  trainer = ref.Trainer(model, 0.005, 0.9, c.optimizer.weight_decay,
                        lambda epoch: 0.005 * 0.1 ** epoch, steps_per_epoch)
  steps = Steps.build(c, classes, steps_per_epoch, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  backbone = _backbone_variables(net, "resnet_tiny_cifar")
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"].update(backbone=backbone["params"], classifier=_numpy(model.fc.weight).T,
                         classifier_bias=_numpy(model.fc.bias),
                         uncertainty=_dense(model.uncertainty))
  params = jax.tree.map(np.float32, params)
  state = state.replace(params=params, batch_stats={"backbone": backbone["batch_stats"]},
                        opt_state=steps.tx.init(params))
  labels = np.array([0, 1, 2, 3, 4, 0, 1, 2], np.int32)
  applied = 0
  for step in range(num_steps):
    images = _images(10 + step)
    d = jax.device_get(steps.draws(step, B))
    x = torch.tensor(np.transpose(images.astype(np.float32) / 255, (0, 3, 1, 2)))
    x = torch.stack([ref.color_jitter_and_lighting(
        x[i], d["color"]["jitter_alpha"][i], int(d["color"]["jitter_order"][i]),
        torch.tensor(d["color"]["lighting_alpha"][i])) for i in range(B)])
    x = (x - torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float32).view(1, 3, 1, 1)
    applied += bool(d["apply"])
    want = trainer.step(x, torch.tensor(labels).long(), float(d["lam"]),
                        torch.tensor(np.asarray(d["perm"])), [int(v) for v in d["box"]],
                        bool(d["apply"]))
    state, metrics = steps.train_step(state, to_global(steps.mesh, {"image": images,
                                                                     "label": labels}),
                                      steps.method.plan(0), train_backbone=True)
    assert float(metrics["loss"]) == pytest.approx(want, rel=2e-5), f"step {step}"
    p = jax.device_get(state.params)["model"]
    _compare_backbone(p["backbone"], net, f"step {step}", atol=1e-5)
    for ours, theirs in ((p["classifier"], _numpy(model.fc.weight).T),
                         (p["classifier_bias"], _numpy(model.fc.bias)),
                         (p["uncertainty"]["kernel"], _numpy(model.uncertainty.weight).T)):
      np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-5, err_msg=f"step {step}")
  assert 0 < applied < num_steps  # CutMix both applied and skipped (probability 0.5).
  # Running statistics: the means equal; PyTorch's variances use the unbiased batch variance
  # (n/(n-1): 0.8 % on the last 4×4 maps of this batch of 8, 1e-4 at ImageNet sizes).
  stats = jax.device_get(state.batch_stats)["backbone"]
  np.testing.assert_allclose(stats["bn1"]["mean"], _numpy(net.bn1.running_mean), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(stats["layer4_0"]["bn2"]["var"],
                             _numpy(net.layer4[0].bn2.running_var), rtol=2e-2)
