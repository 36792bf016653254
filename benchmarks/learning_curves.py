"""Does our loop learn as well as the same recipe in PyTorch?

Usage: python benchmarks/learning_curves.py [--seeds 0,1,2] [--config demo.py] [--arg ""]
       [--method baseline] [--torch_init default,torchvision] [--skip_ours]

The same backbone (the tiny ResNet: ours, and tests/torch_reference.py's with PyTorch's
default initialisation), the same recipe (``configs/demo.py`` with ``method=baseline``:
GAP + GMP, a 64-d head, Multi-Similarity on the cosine, AdamW with the head at 10× the
learning rate, weight decay, gradient clipping by value, BatchNorm training, the step
schedule) and *the same batches* (our grain pipeline's augmented P × K batches, fed to both),
so what differs is the framework, the initialisation and the optimiser's implementation.
Test Recall@1 every ``eval.every_epochs`` (2) epochs, per seed and mean ± sd; prints what it
measured. ``--torch_init``: the PyTorch network with PyTorch's default initialisation
(``kaiming_uniform_(a=sqrt(5))``, what a plain PyTorch CNN gets) and/or torchvision's ResNet
initialisation (Kaiming-normal fan-out convolutions: what our Flax ResNet uses).
"""

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch_reference  # noqa: E402
from conftest import load_config  # noqa: E402
from reference.iaa import multi_similarity  # noqa: E402

from idml_jax import config as config_lib  # noqa: E402
from idml_jax import data, evaluation  # noqa: E402
from idml_jax.models import get_backbone  # noqa: E402
from idml_jax.train import loop  # noqa: E402
from idml_jax.train.checkpoint import Workdir  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402


class TorchEmbedder(nn.Module):
  def __init__(self, dim: int, init: str = "default"):
    super().__init__()
    self.backbone = torch_reference.resnet_tiny()
    if init == "torchvision":  # torchvision's ResNet.__init__, as our Flax ResNet.
      for m in self.backbone.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    self.head = nn.Linear(self.backbone.num_features, dim)
    nn.init.kaiming_normal_(self.head.weight, mode="fan_out")  # As ours (and the papers').
    nn.init.zeros_(self.head.bias)

  def forward(self, x):
    f = self.backbone.features(x)
    return self.head(F.adaptive_avg_pool2d(f, 1).flatten(1) + F.adaptive_max_pool2d(f, 1)
                     .flatten(1))


def _to_torch(images: np.ndarray, spec) -> torch.Tensor:
  x = torch.from_numpy(images.astype(np.float32) * spec.scale)
  x = (x - torch.tensor(spec.mean)) / torch.tensor(spec.std)
  return x.permute(0, 3, 1, 2).contiguous()


def torch_run(c, seed: int, init: str = "default") -> dict[int, float]:
  torch.manual_seed(seed)
  splits = data.load_splits(c.data.name, c.data.source)
  spec = get_backbone(c.model.backbone).input_spec
  sampler = data.ClassBalancedSampler(splits["train"].labels, c.batch_size,
                                      c.data.images_per_class, seed)
  steps_per_epoch = sampler.steps_per_epoch(c.max_steps_per_epoch or None)
  model = TorchEmbedder(c.model.embedding_dim, init)
  opt = torch.optim.AdamW([{"params": model.backbone.parameters()},
                           {"params": model.head.parameters(),
                            "lr": c.optimizer.lr * c.optimizer.head_lr_mult}],
                          lr=c.optimizer.lr, weight_decay=c.optimizer.weight_decay)
  sched = torch.optim.lr_scheduler.MultiStepLR(
      opt, [int(b) * steps_per_epoch for b in c.optimizer.boundaries], c.optimizer.gamma)
  train_tf, test_tf = data.transforms.from_config(c)
  curve = {}

  def evaluate(epoch):
    model.eval()
    embs, labels = [], []
    with torch.no_grad():
      for b in data.eval_batches(splits["test"], batch_size=c.eval.batch_size,
                                 image_size=c.data.image_size, resize_size=c.data.resize_size,
                                 num_threads=2, transform=test_tf):
        e = model(_to_torch(b["image"], spec)).numpy()
        embs.append(e[b["mask"]])
        labels.append(splits["test"].labels[b["index"][b["mask"]]])
    model.train()
    curve[epoch] = evaluation.retrieval_metrics(np.concatenate(embs), np.concatenate(labels),
                                                recall_ks=(1,))["recall@1"]

  evaluate(0)
  total = c.num_epochs * steps_per_epoch
  for step, b in enumerate(data.train_batches(
      splits["train"], sampler, image_size=c.data.image_size, seed=seed, start_step=0,
      num_steps=total, num_threads=2, transform=train_tf)):
    x = F.normalize(model(_to_torch(b["image"], spec)), dim=1)
    y = torch.from_numpy(b["label"].astype(np.int64))
    loss = multi_similarity(x, y, len(y))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), c.optimizer.clip_value)
    opt.step()
    sched.step()
    if (step + 1) % (c.eval.every_epochs * steps_per_epoch) == 0:
      evaluate((step + 1) // steps_per_epoch)
  return curve


def ours_run(c, seed: int) -> dict[int, float]:
  c.seed = seed
  with tempfile.TemporaryDirectory() as w:
    results = loop.train_and_evaluate(c, w)
    rows = [r for r in read_metrics(Workdir(w)) if "eval/recall@1" in r]
    steps_per_epoch = results["steps"] / c.num_epochs
  curve = {0: results["untrained"]["recall@1"]}
  curve.update({round(r["step"] / steps_per_epoch): r["eval/recall@1"] for r in rows})
  return curve


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--config", default="demo.py")
  p.add_argument("--arg", default="")
  p.add_argument("--method", default="baseline")
  p.add_argument("--torch_init", default="default")
  p.add_argument("--skip_ours", action="store_true")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  inits = args.torch_init.split(",")
  curves = {**({} if args.skip_ours else {"ours (JAX)": []}),
            **{f"PyTorch ({i} init)": [] for i in inits}}
  for seed in seeds:
    c = load_config(args.config, args.arg)
    c.method, c.eval.every_epochs, c.eval.nmi = args.method, 2, False
    c.mixing.kind = "mixup" if config_lib.uses_idml(args.method) else "none"
    if not args.skip_ours:
      curves["ours (JAX)"].append(ours_run(c, seed))
    for i in inits:
      curves[f"PyTorch ({i} init)"].append(torch_run(c, seed, i))
    print(f"seed {seed}:", {k: {e: round(v, 4) for e, v in cs[-1].items()}
                            for k, cs in curves.items()}, flush=True)
  epochs = sorted(set.intersection(*(set(cv) for cs in curves.values() for cv in cs)))
  print("| epoch | " + " | ".join(curves) + " |")
  print("|---" * (len(curves) + 1) + "|")
  for e in epochs:
    cells = []
    for cs in curves.values():
      vs = [cv[e] for cv in cs]
      cells.append(f"{statistics.mean(vs):.3f} ± {statistics.stdev(vs):.3f}" if len(vs) > 1
                   else f"{vs[0]:.3f}")
    print(f"| {e} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
