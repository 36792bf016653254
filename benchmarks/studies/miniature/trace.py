"""Where an official recipe's runs part from the official loop: our loop and the official one
from the *same* weights (the pretrained backbone, the heads, the proxies) on the same
batches, step by step, beside the official loop in float64, the yardstick: how far float32
rounding alone moves the official loop.

    python benchmarks/studies/miniature/trace.py --data ~/realdata --recipe ms --seeds 0,1,2,3,4
    python benchmarks/studies/miniature/trace.py --data ~/realdata --recipe iaa_ms --seeds 0,1,2
    python benchmarks/studies/miniature/trace.py --data ~/realdata --recipe idml_pa \
        --pretrained scripts --set glyphs_degraded --seeds 0,1,2

``configs/miniature.py:<recipe>,official`` over the backbone ``run.py`` pretrains and
converts (cached): ``ms``, plain Multi-Similarity with the IAA recipe's optimiser, schedule,
sampler and BatchNorm mode; ``iaa_ms``, the same with IAA, where every loop's estimate is
made from the same augmented training images (each by its own network) and its synthesis
draws the same noise; ``idml_pa``, IDML-PA (the official loop of
``tests/reference/idml_retrieval.py``) with the same Mixup λ and permutation. Per step: the
loss of each loop, and the relative distance of all parameters (‖a − b‖ / ‖official‖) of ours
and of the float64 official loop from the float32 official loop, for the backbone and the
head apart (IDML-PA: the uncertainty head and the proxies too). At the end: each loop's test
Recall@1 and MAP@R, and the paired differences over seeds. If ours parts from the official loop no
faster than float64 does, the loops are the same up to rounding, and what is left between
whole runs is the seeds' spread.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as miniature  # noqa: E402  (its sys.path set-up: the project, tests/, studies/)
import test_parity as tp  # noqa: E402
import torch  # noqa: E402
from learning_curves import _to_torch  # noqa: E402
from reference import iaa as ref_iaa  # noqa: E402
from reference import idml_retrieval as ref_idml  # noqa: E402

from idml_jax import data, evaluation  # noqa: E402


def _linear_vector(linear) -> np.ndarray:
  """A torch ``Linear``'s weight (as our kernel, [in, out]) and bias, flat, float64."""
  return np.concatenate([linear.weight.detach().double().numpy().T.ravel(),
                         linear.bias.detach().double().numpy()])


def _dense_vector(dense) -> np.ndarray:
  """Our ``Dense`` parameters ``{kernel, bias}``, flat, float64."""
  return np.concatenate([np.asarray(dense["kernel"], np.float64).ravel(),
                         np.asarray(dense["bias"], np.float64)])


def _torch_parts(loop) -> dict[str, np.ndarray]:
  """The official loop's parameters as float64 vectors, in our order: backbone, head(s),
  proxies."""
  if isinstance(loop, ref_idml.Trainer):
    net = loop.model.model
    return {"backbone": tp._torch_backbone_vector(net), "head": _linear_vector(net.embedding),
            "uncertainty": _linear_vector(net.uncertainty),
            "proxies": loop.criterion.proxies.detach().double().numpy().ravel()}
  return {"backbone": tp._torch_backbone_vector(loop.model.base),
          "head": _linear_vector(loop.model.linear)}


def _our_parts(params, loop) -> dict[str, np.ndarray]:
  m = params["model"]
  if isinstance(loop, ref_idml.Trainer):
    return {"backbone": tp._flax_backbone_vector(m["backbone"], loop.model.model),
            "head": _dense_vector(m["semantic"]), "uncertainty": _dense_vector(m["uncertainty"]),
            "proxies": np.asarray(params["proxies"], np.float64).ravel()}
  return {"backbone": tp._flax_backbone_vector(m["backbone"], loop.model.base),
          "head": _dense_vector(m["semantic"])}


def _distance(a: dict, b: dict) -> dict[str, float]:
  return {k: float(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(b[k])) for k in b}


def _official(c, pth: str, num_classes: int, spe: int, dtype):
  """The official loop of ``c``'s recipe (its trainer; the model is ``trainer.model``)."""
  net = miniature._backbone(pth)
  torch.manual_seed(c.seed)
  o, dim = c.optimizer, c.model.embedding_dim
  if c.method == "idml":
    model = ref_idml.Model(net, net.num_features, dim).to(dtype)
    model.eval()
    criterion = ref_idml.ProxyAnchor(num_classes, dim, c.loss.kwargs.margin,
                                     c.loss.kwargs.alpha).to(dtype)
    return ref_idml.Trainer(model, criterion, o.lr, o.weight_decay, o.decay_epochs, o.gamma,
                            o.warmup_epochs, spe, o.proxy_lr_mult, o.clip_value)
  model = ref_iaa.Embedding(net, net.num_features, dim).to(dtype)
  model.eval()  # BatchNorm in eval mode throughout (the official fix_batchnorm).
  synthesizes = c.method == "iaa"
  estimator = ref_iaa.Estimator(num_classes, dim, c.iaa.momentum)
  estimator.mean, estimator.covariance, estimator.amount = (
      t.to(dtype) for t in (estimator.mean, estimator.covariance, estimator.amount))
  return ref_iaa.Trainer(model, estimator, ref_iaa.multi_similarity, o.lr, o.weight_decay,
                         list(o.boundaries), o.gamma, spe, c.num_epochs,
                         c.iaa.start_epoch if synthesizes else c.num_epochs + 1,
                         c.iaa.update_every, c.iaa.strength)


def _metrics(embs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  embs = embs / np.linalg.norm(embs, axis=1, keepdims=True)
  m = evaluation.retrieval_metrics(embs, labels, recall_ks=(1,))
  return {"recall@1": m["recall@1"], "map@r": m["map@r"]}


def trace(c, pth: str, heads: str = "official") -> dict:
  """One seed's three loops; ``heads``: whose random draw of the heads (and proxies) all
  three start from, the official loop's (PyTorch's generator) or ours."""
  import flax
  import jax

  from idml_jax.train.steps import Steps, make_mesh, to_global
  splits, sampler, spe, spec = miniature._torch_setup(c)
  num_classes = int(splits["train"].labels.max()) + 1
  trainer32 = _official(c, pth, num_classes, spe, torch.float32)
  trainer64 = _official(c, pth, num_classes, spe, torch.float64)
  idml = isinstance(trainer32, ref_idml.Trainer)
  steps = Steps.build(c, num_classes, spe, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  net = trainer32.model.model if idml else trainer32.model.base
  with torch.no_grad():  # In place: the optimisers hold these tensors.
    if heads == "ours":  # Our draw of the heads (and proxies) into the official loop.
      p = jax.device_get(state.params)
      pairs = ([(net.embedding, "semantic"), (net.uncertainty, "uncertainty")] if idml else
               [(trainer32.model.linear, "semantic")])
      for linear, name in pairs:
        linear.weight.copy_(torch.from_numpy(np.array(p["model"][name]["kernel"]).T))
        linear.bias.copy_(torch.from_numpy(np.array(p["model"][name]["bias"])))
      if idml:
        trainer32.criterion.proxies.copy_(torch.from_numpy(np.array(p["proxies"])))
    for a, b in zip(trainer64.model.state_dict().values(),
                    trainer32.model.state_dict().values(), strict=True):
      a.copy_(b)
    if idml:
      trainer64.criterion.proxies.copy_(trainer32.criterion.proxies)
  backbone = tp._backbone_variables(net, miniature.BACKBONE)
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"]["backbone"] = backbone["params"]
  if idml:
    params["model"]["semantic"] = tp._dense(net.embedding)
    params["model"]["uncertainty"] = tp._dense(net.uncertainty)
    params["proxies"] = tp._numpy(trainer32.criterion.proxies)
  else:
    params["model"]["semantic"] = tp._dense(trainer32.model.linear)
  params = jax.tree.map(np.float32, params)
  state = state.replace(params=params, batch_stats={"backbone": backbone["batch_stats"]},
                        opt_state=steps.tx.init(params))
  assert max(_distance(_our_parts(params, trainer32), _torch_parts(trainer32)).values()) < 1e-7
  train_tf = data.transforms.from_config(c)[0]
  rows = []
  for step, b in enumerate(data.train_batches(
      splits["train"], sampler, image_size=c.data.image_size, seed=c.seed, start_step=0,
      num_steps=c.num_epochs * spe, num_threads=2, transform=train_tf)):
    epoch = step // spe
    due = step % spe == 0 and steps.method.pass_due(epoch)
    if not idml and due != trainer32.estimate_due():
      raise AssertionError(f"step {step}: the estimate is due in one loop only")
    if due:  # Each loop's estimate from the same augmented images, by its own network.
      state = _estimate(c, splits["train"], epoch, spec, steps, state, trainer32, trainer64)
    x, y = _to_torch(b["image"], spec), torch.from_numpy(b["label"].astype(np.int64))
    draws = jax.device_get(steps.draws(step, len(y)))
    if idml:
      lam, perm = float(draws["lam"]), torch.from_numpy(np.array(draws["perm"], np.int64))
      loss32 = trainer32.step(x, y, lam, perm)
      loss64 = trainer64.step(x.double(), y, lam, perm)
    else:
      noise = torch.from_numpy(np.array(draws["noise"])) if "noise" in draws else \
          torch.zeros((1, len(y), c.model.embedding_dim))
      loss32 = trainer32.step(x, y, noise)
      loss64 = trainer64.step(x.double(), y, noise.double())
    state, metrics = steps.train_step(
        state, to_global(steps.mesh, {"image": b["image"], "label": b["label"]}),
        steps.method.plan(epoch), train_backbone=epoch >= c.optimizer.warmup_epochs)
    ref = _torch_parts(trainer32)
    rows.append({"loss": (float(metrics["loss"]), loss32, loss64),
                 "ours": _distance(_our_parts(jax.device_get(state.params), trainer32), ref),
                 "float64": _distance(_torch_parts(trainer64), ref)})
  final = {}
  for name, embed in (("ours", lambda im: np.asarray(steps.embed(state, im)["semantic"])),
                      ("official", lambda im: _torch_embed(trainer32.model, im, spec,
                                                           torch.float32)),
                      ("official_float64", lambda im: _torch_embed(trainer64.model, im, spec,
                                                                   torch.float64))):
    embs, labels = [], []
    for e in data.eval_batches(splits["test"], batch_size=c.eval.batch_size,
                               image_size=c.data.image_size, resize_size=c.data.resize_size,
                               num_threads=2, transform=data.transforms.from_config(c)[1]):
      embs.append(embed(e["image"])[e["mask"]])
      labels.append(splits["test"].labels[e["index"][e["mask"]]])
    final[name] = _metrics(np.concatenate(embs).astype(np.float64), np.concatenate(labels))
  return {"steps": rows, "steps_per_epoch": spe, "final": final}


def _estimate(c, source, epoch: int, spec, steps, state, *trainers):
  """Every loop's IAA estimate from one pass over the training set (the training
  augmentation, seeded by the epoch, as the loop's pass): ours in ``state``'s carry."""
  ours, theirs, labels = [], [[] for _ in trainers], []
  for e in data.eval_batches(source, batch_size=c.eval.batch_size,
                             image_size=c.data.image_size, resize_size=c.data.resize_size,
                             num_threads=2, transform=data.transforms.from_config(c)[0],
                             seed=[c.seed, epoch]):
    ours.append(np.asarray(steps.embed(state, e["image"])["semantic"])[e["mask"]])
    for t, out in zip(trainers, theirs, strict=True):
      with torch.no_grad():
        dtype = next(t.model.parameters()).dtype
        out.append(t.model(_to_torch(e["image"], spec).to(dtype))[torch.from_numpy(e["mask"])])
    labels.append(e["label"][e["mask"]].astype(np.int64))
  labels = np.concatenate(labels)
  for t, out in zip(trainers, theirs, strict=True):
    t.estimator.global_update(torch.cat(out), torch.from_numpy(labels))
  return state.replace(carry={**steps.method.update(state.carry, np.concatenate(ours),
                                                    labels.astype(np.int32)),
                              "epoch": np.int32(epoch)})


def _torch_embed(model, images: np.ndarray, spec, dtype) -> np.ndarray:
  with torch.no_grad():
    out = model(_to_torch(images, spec).to(dtype))
    return (out[0] if isinstance(out, tuple) else out).double().numpy()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=os.path.expanduser("~/realdata"))
  p.add_argument("--cache", default=os.path.expanduser("~/.cache/idml_jax/miniature"))
  p.add_argument("--recipe", default="ms", choices=("ms", "iaa_ms", "idml_pa"))
  p.add_argument("--set", default="glyphs", help="the set to fine-tune on (make_sets.py's)")
  p.add_argument("--heads", default="official", choices=("official", "ours"),
                 help="whose random draw of the heads and proxies every loop starts from")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--pretrained", default="icons", choices=sorted(miniature.pretrain.PRETRAININGS))
  args = p.parse_args()
  torch.set_num_threads(1)
  pth, weights = miniature.prepare(args.data, args.cache, args.pretrained)
  runs = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    runs.append(trace(miniature.config(args.recipe, True, args.data, weights, seed, args.set),
                      pth, args.heads))
    f = runs[-1]["final"]
    print(f"seed {seed}: " + ", ".join(f"{k} R@1 {v['recall@1']:.4f} MAP@R {v['map@r']:.4f}"
                                       for k, v in f.items()), flush=True)
  spe, n = runs[0]["steps_per_epoch"], len(runs[0]["steps"])
  print(f"\n{args.recipe},official: median over seeds of ‖a − official‖ / ‖official‖ "
        f"(the float32 official loop), {len(runs)} seeds, {spe} steps an epoch")
  parts = list(runs[0]["steps"][0]["ours"])
  print(f"| step | ours: {' / '.join(parts)} | official float64: {' / '.join(parts)} | "
        "loss ours / official / float64 |")
  print("|---|---|---|---|")
  shown = sorted({0, 1, 2, 4, 9, 19} | {e * spe - 1 for e in range(1, n // spe + 1)}
                 | {e * spe for e in range(1, n // spe)})
  for i in [i for i in shown if i < n]:
    med = lambda who, part, i=i: np.median([r["steps"][i][who][part] for r in runs])
    loss = np.mean([r["steps"][i]["loss"] for r in runs], axis=0)
    cells = [" / ".join(f"{med(who, p):.1e}" for p in parts) for who in ("ours", "float64")]
    print(f"| {i + 1} | {cells[0]} | {cells[1]} | "
          f"{loss[0]:.4f} / {loss[1]:.4f} / {loss[2]:.4f} |")
  print("\nfinal test figures (%), mean ± sd over seeds; paired differences ± standard error")
  for metric in ("recall@1", "map@r"):
    v = {k: np.array([100 * r["final"][k][metric] for r in runs])
         for k in ("ours", "official", "official_float64")}
    se = lambda d: d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    d1, d2 = v["ours"] - v["official"], v["official_float64"] - v["official"]
    print(f"{metric}: ours {v['ours'].mean():.2f} ± {v['ours'].std(ddof=1):.2f}, official "
          f"{v['official'].mean():.2f} ± {v['official'].std(ddof=1):.2f}, official float64 "
          f"{v['official_float64'].mean():.2f}; ours − official {d1.mean():+.2f} ± {se(d1):.2f}, "
          f"float64 − official {d2.mean():+.2f} ± {se(d2):.2f}")


if __name__ == "__main__":
  main()
