"""Does our loop learn as well as the same recipe in PyTorch? (same batches, same network)

    python benchmarks/studies/learning_curves.py [--config small_images.py] \
        [--arg baseline,ms,resnet] \
        [--data_dir /tmp/realdata/glyphs] [--backbone cnn_small] [--seeds 0,1,2] \
        [--torch_init default,ours] [--same_start] [--skip_ours]

Both frameworks train the network the config names (``model.backbone``: ``resnet_tiny`` /
``resnet_tiny_cifar``, ours and ``tests/torch_reference.py``'s; ``cnn_small``, a PyTorch
user's plain CNN and its Flax twin ``models/cnn.py``) with the config's pooling, embedding
head, loss (Multi-Similarity with its mining, or contrastive: the official IAA functions in
``tests/reference/iaa.py``), optimiser (Adam, AdamW or SGD, the head's rate multiplier,
clipping by value when set), step schedule and BatchNorm training, on *the same batches*: our
grain pipeline's augmented P × K batches, fed to both. What differs is the framework, the
initialisation and the optimiser's implementation. ``--torch_init``: PyTorch's default layer
initialisation (``kaiming_uniform_(a=sqrt(5))``: what a plain PyTorch network gets) and/or
ours (Kaiming-normal fan-out convolutions, torchvision's ResNet initialisation: what our Flax
layers use). ``--same_start``: our backbone starts from the PyTorch network's initial weights
(converted with ``idml_jax.models.convert``; the heads are drawn alike, not copied). Without
``--data_dir`` the demo's glyphs (shipped with matplotlib). Test Recall@1 at each evaluation
(``eval.every_epochs``), per seed, then mean ± sd; prints what it measured.
"""

import argparse
import ast
import functools
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import torch_reference  # noqa: E402
from conftest import load_config  # noqa: E402
from reference.iaa import contrastive, multi_similarity  # noqa: E402

from idml_jax import data, evaluation  # noqa: E402
from idml_jax.models import convert, get_backbone  # noqa: E402
from idml_jax.train import loop  # noqa: E402
from idml_jax.train.reporting import read_metrics  # noqa: E402
from idml_jax.train.workdir import Workdir  # noqa: E402

TORCH_BACKBONES = {"resnet_tiny": torch_reference.resnet_tiny,
                   "resnet_tiny_cifar": lambda: torch_reference.resnet_tiny(small_images=True),
                   "cnn_small": torch_reference.SmallCNN}
TORCH_POOLINGS = {"avg": lambda f: f.mean((2, 3)), "max": lambda f: f.amax((2, 3)),
                  "avg+max": lambda f: f.mean((2, 3)) + f.amax((2, 3))}
TORCH_LOSSES = {"multi_similarity": multi_similarity, "contrastive": contrastive}


def pml_multi_similarity(x, labels, batch, thresh=0.5, margin=0.1, scale_pos=2.0,
                         scale_neg=40.0):
  """pytorch-metric-learning's Multi-Similarity loss and miner (an implementation that is not
  ours nor the official IAA code's), with the same constants: ``MultiSimilarityLoss(alpha,
  beta, base)`` on the pairs ``MultiSimilarityMiner(epsilon)`` mines."""
  from pytorch_metric_learning import losses, miners
  del batch
  miner = miners.MultiSimilarityMiner(epsilon=margin)
  loss = losses.MultiSimilarityLoss(alpha=scale_pos, beta=scale_neg, base=thresh)
  return loss(x, labels, miner(x, labels))


# --torch_loss: whose implementation the PyTorch loop trains with.
TORCH_LOSS_IMPLEMENTATIONS = {"official": TORCH_LOSSES,
                              "pml": {"multi_similarity": pml_multi_similarity}}


class TorchEmbedder(nn.Module):
  """The config's backbone, pooling and embedding head in PyTorch."""

  def __init__(self, c, init: str = "default"):
    super().__init__()
    self.backbone = TORCH_BACKBONES[c.model.backbone]()
    self.pool = TORCH_POOLINGS[c.model.pooling]
    if init == "ours":  # Kaiming-normal fan-out, as our Flax convolutions (torchvision's).
      for m in self.backbone.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    self.head = nn.Linear(self.backbone.num_features, c.model.embedding_dim)
    nn.init.kaiming_normal_(self.head.weight, mode="fan_out")  # As ours (and the papers').
    nn.init.zeros_(self.head.bias)

  def forward(self, x):
    return self.head(self.pool(self.backbone.features(x)))


def _torch_optimizer(c, model, steps_per_epoch):
  o = c.optimizer
  if o.warmup_epochs or o.schedule != "multistep":
    raise SystemExit("learning_curves.py ports the multistep schedule without warm-up only: "
                     "set optimizer.warmup_epochs=0, optimizer.schedule=multistep.")
  groups = [{"params": model.backbone.parameters()},
            {"params": model.head.parameters(), "lr": o.lr * o.head_lr_mult}]
  make = {"adam": lambda: torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay),
          "adamw": lambda: torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay),
          "sgd": lambda: torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov, weight_decay=o.weight_decay)}
  opt = make[o.name]()
  return opt, torch.optim.lr_scheduler.MultiStepLR(
      opt, [int(b) * steps_per_epoch for b in o.boundaries], o.gamma)


def _to_torch(images: np.ndarray, spec) -> torch.Tensor:
  x = torch.from_numpy(images.astype(np.float32) * spec.scale)
  x = (x - torch.tensor(spec.mean)) / torch.tensor(spec.std)
  return x.permute(0, 3, 1, 2).contiguous()


def torch_test_embeddings(c, embed, source, spec) -> tuple[np.ndarray, np.ndarray]:
  """``embed`` (a PyTorch ``[B, 3, H, W] -> [B, D]``) of every image of ``source`` with the
  config's test transform, and their labels: [N, D], [N]."""
  embs, labels = [], []
  with torch.no_grad():
    for b in data.eval_batches(source, batch_size=c.eval.batch_size,
                               image_size=c.data.image_size, resize_size=c.data.resize_size,
                               num_threads=2, transform=data.transforms.from_config(c)[1]):
      embs.append(embed(_to_torch(b["image"], spec)).numpy()[b["mask"]])
      labels.append(source.labels[b["index"][b["mask"]]])
  return np.concatenate(embs), np.concatenate(labels)


def torch_run(c, seed: int, init: str = "default",
              loss_impl: str = "official") -> tuple[dict[int, float], dict]:
  """PyTorch's curve ``{epoch: Recall@1}`` and its network's initial state dict."""
  table = TORCH_LOSS_IMPLEMENTATIONS[loss_impl]
  if c.loss.name not in table or c.method != "baseline":
    raise SystemExit(f"learning_curves.py compares baselines with {', '.join(table)} "
                     f"({loss_impl}); got method={c.method}, loss={c.loss.name}.")
  torch.manual_seed(seed)
  splits = data.load_splits(c.data.name, c.data.source, c.data.data_dir)
  spec = get_backbone(c.model.backbone).input_spec
  sampler = data.ClassBalancedSampler(splits["train"].labels, c.batch_size,
                                      c.data.images_per_class, seed)
  steps_per_epoch = sampler.steps_per_epoch(c.max_steps_per_epoch or None)
  model = TorchEmbedder(c, init)
  start = {k: np.array(v.detach().numpy(), copy=True) for k, v in model.state_dict().items()}
  opt, sched = _torch_optimizer(c, model, steps_per_epoch)
  loss_fn = table[c.loss.name]
  train_tf = data.transforms.from_config(c)[0]
  curve = {}

  def evaluate(epoch):
    model.eval()
    embs, labels = torch_test_embeddings(c, model, splits["test"], spec)
    model.train()
    curve[epoch] = evaluation.retrieval_metrics(embs, labels, recall_ks=(1,))["recall@1"]

  evaluate(0)
  model.train()  # BatchNorm trains (model.batch_norm=train); the config must say so.
  total = c.num_epochs * steps_per_epoch
  for step, b in enumerate(data.train_batches(
      splits["train"], sampler, image_size=c.data.image_size, seed=seed, start_step=0,
      num_steps=total, num_threads=2, transform=train_tf)):
    x = F.normalize(model(_to_torch(b["image"], spec)), dim=1)
    y = torch.from_numpy(b["label"].astype(np.int64))
    loss = loss_fn(x, y, len(y), **dict(c.loss.kwargs))
    opt.zero_grad()
    loss.backward()
    if c.optimizer.clip_value:
      torch.nn.utils.clip_grad_value_(model.parameters(), c.optimizer.clip_value)
    opt.step()
    sched.step()
    if (step + 1) % (c.eval.every_epochs * steps_per_epoch) == 0:
      evaluate((step + 1) // steps_per_epoch)
  return curve, start


def ours_run(c, seed: int, start: dict | None = None) -> dict[int, float]:
  """Our curve; ``start``: a PyTorch state dict whose backbone ours begins from (the heads
  are drawn from the same distribution, not copied)."""
  c.seed = seed
  with tempfile.TemporaryDirectory() as w:
    if start is not None:
      backbone = {k.removeprefix("backbone."): v for k, v in start.items()
                  if k.startswith("backbone.")}
      convert.save(convert.convert(backbone, c.model.backbone), os.path.join(w, "start"))
      c.model.pretrained = os.path.join(w, "start")
    results = loop.train_and_evaluate(c, os.path.join(w, "run"))
    rows = [r for r in read_metrics(Workdir(os.path.join(w, "run"))) if "eval/recall@1" in r]
    steps_per_epoch = results["steps"] / c.num_epochs
  curve = {0: results["untrained"]["recall@1"]}
  curve.update({round(r["step"] / steps_per_epoch): r["eval/recall@1"] for r in rows})
  return curve


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--config", default="small_images.py")
  p.add_argument("--arg", default="baseline,ms,resnet")
  p.add_argument("--data_dir", default=None, help="DIR/train/<class>/*, DIR/test/<class>/*")
  p.add_argument("--backbone", default=None, help="model.backbone (default: the config's)")
  p.add_argument("--torch_init", default="default")
  p.add_argument("--torch_loss", default="official", help="official (tests/reference/iaa.py) "
                 "and/or pml (pytorch-metric-learning's loss and miner; pip install "
                 "pytorch-metric-learning)")
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="A config override for both loops (e.g. data.augment=pad_crop_noflip).")
  p.add_argument("--same_start", action="store_true")
  p.add_argument("--skip_ours", action="store_true")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  inits = args.torch_init.split(",")
  impls = args.torch_loss.split(",")
  torch_rows = [(i, m) for i in inits for m in impls]
  name = lambda i, m: (f"PyTorch ({i} init, {m} loss)" if len(impls) > 1 or m != "official"
                       else f"PyTorch ({i} init)")
  curves = {**{name(i, m): [] for i, m in torch_rows},
            **({} if args.skip_ours else {"ours (JAX)": []})}
  for seed in seeds:
    c = load_config(args.config, args.arg)
    if args.data_dir:
      c.data.source, c.data.name, c.data.data_dir = "folder", "image_folder", args.data_dir
    else:
      c.data.source, c.data.name = "demo", "glyphs"
    if args.backbone:
      c.model.backbone = args.backbone
    for key, value in (o.split("=", 1) for o in args.override):
      current = functools.reduce(lambda node, part: node[part], key.split("."), c)
      c.update_from_flattened_dict(
          {key: value if isinstance(current, str) else ast.literal_eval(value)})
    c.eval.nmi = False
    start = None
    for i, m in torch_rows:
      curve, start = torch_run(c, seed, i, m)
      curves[name(i, m)].append(curve)
    if not args.skip_ours:
      curves["ours (JAX)"].append(ours_run(c, seed, start if args.same_start else None))
    print(f"seed {seed}:", {k: {e: round(v, 4) for e, v in cs[-1].items()}
                            for k, cs in curves.items()}, flush=True)
  epochs = sorted(set.intersection(*(set(cv) for cs in curves.values() for cv in cs)))
  print(f"{args.config}:{args.arg} {c.model.backbone} on {args.data_dir or 'demo glyphs'}, "
        f"seeds {args.seeds}{', same start' if args.same_start else ''}: test Recall@1")
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
