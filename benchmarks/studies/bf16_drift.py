"""How far the `,official` IDML-PA step drifts from the official float32 step, in float32 and
with the backbone in bfloat16 (``--config.model.dtype=bfloat16``), step by step.

    python benchmarks/studies/bf16_drift.py [--steps 10] [--seeds 0,1,2]

The construction of ``tests/test_parity.py``'s IDML-PA parity test (a random tiny
torchvision-layout ResNet converted into ours, the same batches, Mixup draws, Proxy-Anchor
proxies, Adam, the warm-up epoch with the backbone frozen, then a learning rate halved every
epoch, gradient clipping): the PyTorch port of the official step runs in float32, ours once in
float32 and once with the backbone computing in bfloat16 (parameters, embeddings, the ISM and
the loss stay float32). Per step, the relative drift from the official step of the loss
(|Δ| / |official|), of all parameters (‖Δ‖ / ‖official‖) and of the step's update
(‖Δ update‖ / ‖official update‖), mean over seeds (and the largest).
"""

import argparse
import os
import sys

import flax
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import test_parity as tp  # noqa: E402
import torch  # noqa: E402
import torch_reference  # noqa: E402
from reference import idml_retrieval  # noqa: E402

from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402


def _flat_torch(net, criterion) -> np.ndarray:
  """The official parameters, in the order of :func:`_flat_ours`."""
  return np.concatenate([tp._torch_backbone_vector(net),
                         tp._numpy(net.embedding.weight).T.ravel(), tp._numpy(net.embedding.bias),
                         tp._numpy(criterion.proxies).ravel()])


def _flat_ours(params, net) -> np.ndarray:
  sem = params["model"]["semantic"]
  return np.concatenate([tp._flax_backbone_vector(params["model"]["backbone"], net),
                         np.asarray(sem["kernel"]).ravel(), np.asarray(sem["bias"]),
                         np.asarray(params["proxies"]).ravel()])


def run(seed: int, dtype: str, num_steps: int, steps_per_epoch: int = 2) -> list[dict]:
  c = tp._idml_config()
  c.model.dtype = dtype
  torch.manual_seed(seed)
  net = torch_reference.resnet_tiny()
  torch_reference.randomize_batch_norm(net, seed=seed)
  model = idml_retrieval.Model(net, net.num_features, tp.D)
  criterion = idml_retrieval.ProxyAnchor(tp.C, tp.D)
  trainer = idml_retrieval.Trainer(model, criterion, lr=1e-3, weight_decay=1e-4, decay_step=1,
                                   gamma=0.5, warm=1, steps_per_epoch=steps_per_epoch,
                                   clip=tp.CLIP)
  steps = Steps.build(c, tp.C, steps_per_epoch, make_mesh(jax.devices()[:1]))
  state = steps.fresh_state()
  backbone = tp._backbone_variables(net)
  params = flax.core.unfreeze(jax.device_get(state.params))
  params["model"]["backbone"] = backbone["params"]
  params["model"]["semantic"] = tp._dense(net.embedding)
  params["model"]["uncertainty"] = tp._dense(net.uncertainty)
  params["proxies"] = tp._numpy(criterion.proxies)
  params = jax.tree.map(np.float32, params)
  state = state.replace(params=params, batch_stats={"backbone": backbone["batch_stats"]},
                        opt_state=steps.tx.init(params))
  labels = np.array([0, 0, 1, 1, 2, 2, 3, 1], np.int32)
  before_t, before_o = _flat_torch(net, criterion), _flat_ours(params, net)
  out = []
  for step in range(num_steps):
    images = tp._images(100 * seed + step)
    draws = jax.device_get(steps.draws(step, tp.B))
    want = trainer.step(tp._to_torch(images), torch.tensor(labels, dtype=torch.long),
                        float(draws["lam"]), torch.tensor(np.asarray(draws["perm"])))
    batch = to_global(steps.mesh, {"image": images, "label": labels})
    state, metrics = steps.train_step(state, batch, steps.method.plan(step // steps_per_epoch),
                                      train_backbone=step >= steps_per_epoch)
    after_t, after_o = _flat_torch(net, criterion), _flat_ours(jax.device_get(state.params), net)
    upd_t, upd_o = after_t - before_t, after_o - before_o
    out.append({"loss": abs(float(metrics["loss"]) - want) / abs(want),
                "params": float(np.linalg.norm(after_o - after_t) / np.linalg.norm(after_t)),
                "update": float(np.linalg.norm(upd_o - upd_t) / max(np.linalg.norm(upd_t),
                                                                     1e-30))})
    before_t, before_o = after_t, after_o
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--seeds", default="0,1,2")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = {d: [run(s, d, args.steps) for s in seeds] for d in ("float32", "bfloat16")}
  print(f"IDML-PA ,official step against the official float32 step (PyTorch), seeds "
        f"{args.seeds}; steps 0-1: warm-up (backbone frozen), then the lr halves every 2 steps")
  print("| step | " + " | ".join(f"{d}: loss / params / update" for d in runs) + " |")
  print("|---|" + "---|" * len(runs))
  for i in range(args.steps):
    cells = []
    for rs in runs.values():
      m = {k: np.mean([r[i][k] for r in rs]) for k in ("loss", "params", "update")}
      cells.append(f"{m['loss']:.1e} / {m['params']:.1e} / {m['update']:.1e}")
    print(f"| {i} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
