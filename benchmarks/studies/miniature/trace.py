"""Where the official IAA recipe's runs part from the official loop: our loop and the
official one from the *same* weights (the pretrained backbone and one head) on the same
batches, step by step, beside the official loop in float64, the yardstick: how far float32
rounding alone moves the official loop.

    python benchmarks/studies/miniature/trace.py --data ~/realdata --recipe ms --seeds 0,1,2,3,4
    python benchmarks/studies/miniature/trace.py --data ~/realdata --recipe iaa_ms --seeds 0,1,2

``configs/miniature.py:<recipe>,official`` over the backbone ``run.py`` pretrains and
converts (cached): ``ms``, plain Multi-Similarity with the IAA recipe's optimiser, schedule,
sampler and BatchNorm mode; ``iaa_ms``, the same with IAA, where every loop's estimate is
made from the same augmented training images (each by its own network) and its synthesis
draws the same noise. Per step: the loss of each loop, and the relative distance of all
parameters (‖a − b‖ / ‖official‖) of ours and of the float64 official loop from the float32
official loop, for the backbone and the head apart. At the end: each loop's test Recall@1
and MAP@R, and the paired differences over seeds. If ours parts from the official loop no
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

from idml_jax import data, evaluation  # noqa: E402


def _torch_parts(model) -> dict[str, np.ndarray]:
  """The official model's parameters as float64 vectors, in our order: backbone, head."""
  return {"backbone": tp._torch_backbone_vector(model.base),
          "head": np.concatenate([model.linear.weight.detach().double().numpy().T.ravel(),
                                  model.linear.bias.detach().double().numpy()])}


def _our_parts(params, model) -> dict[str, np.ndarray]:
  sem = params["model"]["semantic"]
  return {"backbone": tp._flax_backbone_vector(params["model"]["backbone"], model.base),
          "head": np.concatenate([np.asarray(sem["kernel"], np.float64).ravel(),
                                  np.asarray(sem["bias"], np.float64)])}


def _distance(a: dict, b: dict) -> dict[str, float]:
  return {k: float(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(b[k])) for k in b}


def _official(c, pth: str, num_classes: int, spe: int, dtype):
  net = miniature._backbone(pth)
  torch.manual_seed(c.seed)
  model = ref_iaa.Embedding(net, net.num_features, c.model.embedding_dim).to(dtype)
  model.eval()  # BatchNorm in eval mode throughout (the official fix_batchnorm).
  o, synthesizes = c.optimizer, c.method == "iaa"
  estimator = ref_iaa.Estimator(num_classes, c.model.embedding_dim, c.iaa.momentum)
  estimator.mean, estimator.covariance, estimator.amount = (
      t.to(dtype) for t in (estimator.mean, estimator.covariance, estimator.amount))
  trainer = ref_iaa.Trainer(model, estimator, ref_iaa.multi_similarity, o.lr, o.weight_decay,
                            list(o.boundaries), o.gamma, spe, c.num_epochs,
                            c.iaa.start_epoch if synthesizes else c.num_epochs + 1,
                            c.iaa.update_every, c.iaa.strength)
  return model, trainer


def _metrics(embs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  embs = embs / np.linalg.norm(embs, axis=1, keepdims=True)
  m = evaluation.retrieval_metrics(embs, labels, recall_ks=(1,))
  return {"recall@1": m["recall@1"], "map@r": m["map@r"]}


def trace(c, pth: str) -> dict:
  import flax
  import jax

  from idml_jax.train.steps import Steps, make_mesh, to_global
  splits, sampler, spe, spec = miniature._torch_setup(c)
  num_classes = int(splits["train"].labels.max()) + 1
  t32, trainer32 = _official(c, pth, num_classes, spe, torch.float32)
  t64, trainer64 = _official(c, pth, num_classes, spe, torch.float64)
  t64.load_state_dict({k: v.double() for k, v in t32.state_dict().items()})
  steps = Steps.build(c, num_classes, spe, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  backbone = tp._backbone_variables(t32.base, miniature.BACKBONE)
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"]["backbone"] = backbone["params"]
  params["model"]["semantic"] = tp._dense(t32.linear)
  params = jax.tree.map(np.float32, params)
  state = state.replace(params=params, batch_stats={"backbone": backbone["batch_stats"]},
                        opt_state=steps.tx.init(params))
  assert max(_distance(_our_parts(params, t32), _torch_parts(t32)).values()) < 1e-7
  train_tf = data.transforms.from_config(c)[0]
  rows = []
  for step, b in enumerate(data.train_batches(
      splits["train"], sampler, image_size=c.data.image_size, seed=c.seed, start_step=0,
      num_steps=c.num_epochs * spe, num_threads=2, transform=train_tf)):
    epoch = step // spe
    due = step % spe == 0 and steps.method.pass_due(epoch)
    if due != trainer32.estimate_due():
      raise AssertionError(f"step {step}: the estimate is due in one loop only")
    if due:  # Each loop's estimate from the same augmented images, by its own network.
      state = _estimate(c, splits["train"], epoch, spec, steps, state, trainer32, trainer64)
    x, y = _to_torch(b["image"], spec), torch.from_numpy(b["label"].astype(np.int64))
    draws = jax.device_get(steps.draws(step, len(y)))
    noise = torch.from_numpy(np.array(draws["noise"])) if "noise" in draws else \
        torch.zeros((1, len(y), c.model.embedding_dim))
    loss32 = trainer32.step(x, y, noise)
    loss64 = trainer64.step(x.double(), y, noise.double())
    state, metrics = steps.train_step(
        state, to_global(steps.mesh, {"image": b["image"], "label": b["label"]}),
        steps.method.plan(epoch), train_backbone=epoch >= c.optimizer.warmup_epochs)
    ref = _torch_parts(t32)
    rows.append({"loss": (float(metrics["loss"]), loss32, loss64),
                 "ours": _distance(_our_parts(jax.device_get(state.params), t32), ref),
                 "float64": _distance(_torch_parts(t64), ref)})
  final = {}
  for name, embed in (("ours", lambda im: np.asarray(steps.embed(state, im)["semantic"])),
                      ("official", lambda im: _torch_embed(t32, im, spec, torch.float32)),
                      ("official_float64", lambda im: _torch_embed(t64, im, spec,
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
    return model(_to_torch(images, spec).to(dtype)).double().numpy()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", default=os.path.expanduser("~/realdata"))
  p.add_argument("--cache", default=os.path.expanduser("~/.cache/idml_jax/miniature"))
  p.add_argument("--recipe", default="ms", choices=("ms", "iaa_ms"))
  p.add_argument("--seeds", default="0,1,2")
  args = p.parse_args()
  torch.set_num_threads(1)
  weights = miniature.prepare(args.data, args.cache)
  pth = os.path.join(args.cache, "icons_resnet_tiny.pth")
  runs = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    runs.append(trace(miniature.config(args.recipe, True, args.data, weights, seed), pth))
    f = runs[-1]["final"]
    print(f"seed {seed}: " + ", ".join(f"{k} R@1 {v['recall@1']:.4f} MAP@R {v['map@r']:.4f}"
                                       for k, v in f.items()), flush=True)
  spe, n = runs[0]["steps_per_epoch"], len(runs[0]["steps"])
  print(f"\n{args.recipe},official: median over seeds of ‖a − official‖ / ‖official‖ "
        f"(the float32 official loop), {len(runs)} seeds, {spe} steps an epoch")
  print("| step | ours: backbone / head | official float64: backbone / head | "
        "loss ours / official / float64 |")
  print("|---|---|---|---|")
  shown = sorted({0, 1, 2, 4, 9, 19} | {e * spe - 1 for e in range(1, n // spe + 1)})
  for i in [i for i in shown if i < n]:
    med = lambda who, part, i=i: np.median([r["steps"][i][who][part] for r in runs])
    loss = np.mean([r["steps"][i]["loss"] for r in runs], axis=0)
    print(f"| {i + 1} | {med('ours', 'backbone'):.1e} / {med('ours', 'head'):.1e} | "
          f"{med('float64', 'backbone'):.1e} / {med('float64', 'head'):.1e} | "
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
