"""The miniature's "ImageNet" weights: a torchvision-layout tiny ResNet pretrained in PyTorch.

    python benchmarks/studies/miniature/pretrain.py --data ~/realdata --out weights/icons.pth
    python benchmarks/studies/miniature/pretrain.py --data ~/realdata --corpus scripts \
        --out weights/scripts.pth

Trains ``tests/torch_reference.py``'s ``resnet_tiny(small_images=True)`` (torchvision's
ResNet module names, one BasicBlock per stage, width 8, the CIFAR stem) with a 1000-way-style
``fc`` classifier on every class of the ``icons`` set (train and test folders: 252 icon
names, ~3,200 drawings at 32 px) — a domain of its own, class-disjoint from the ``glyphs``
set the miniature fine-tunes on, as ImageNet is from CUB. Adam, pad-4 crops and flips, a fixed
number of epochs, one thread, deterministic algorithms — yet not bit-identical across
processes (two runs: loss 5.015 vs 5.018 at epoch 9, final train accuracy 0.349 vs 0.341),
so the file is cached and every row of a benchmark uses the same one.

``--corpus scripts`` (``PRETRAININGS``) pretrains instead on ``make_sets.py``'s ``scripts``:
449 letters of other writing systems in the glyph sets' fonts (~5,900 images) — the glyph
sets' domain without their classes, so the features transfer as ImageNet's do to CUB — for
60 epochs, without flips (a mirrored letter is another shape), and holds out every 8th image
of each letter to report a held-out accuracy beside the training one. Writes a
plain ``state_dict`` ``.pth`` (what a user brings from torchvision) and ``.json`` beside it
with the settings, the training accuracy and the seconds it took; an existing file with the
same settings is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests"))
import torch_reference  # noqa: E402

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's.
SETTINGS = {"set": "icons", "network": "resnet_tiny(small_images=True)", "image_size": 32,
            "epochs": 40, "batch_size": 128, "lr": 2e-3, "weight_decay": 5e-4, "seed": 0}
# --corpus -> its settings (``icons``'s are unchanged, so its cached file stays valid).
PRETRAININGS = {
    "icons": SETTINGS,
    "scripts": {**SETTINGS, "set": "scripts", "epochs": 60, "flip": False,
                "held_out_every": 8},
}


def held_out(y: np.ndarray, every: int | None) -> np.ndarray:
  """bool [N]: every ``every``-th image of each class (in file order), none if ``every`` is
  falsy."""
  mask = np.zeros(len(y), bool)
  if every:
    for c in np.unique(y):
      mask[np.flatnonzero(y == c)[every - 1::every]] = True
  return mask


def read_folder(root: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Every ``root/{train,test}/<class>/*`` image, RGB on white at ``size``² [N, 3, S, S] in
  ImageNet normalisation, and its class index [N] (classes in sorted order)."""
  paths = sorted((c, os.path.join(root, split, c, f)) for split in ("train", "test")
                 for c in os.listdir(os.path.join(root, split))
                 for f in sorted(os.listdir(os.path.join(root, split, c))))
  names = sorted({c for c, _ in paths})
  images = []
  for _, p in paths:
    im = Image.open(p)
    im = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(white, im).convert("RGB").resize((size, size), Image.BILINEAR)
    images.append((np.asarray(im, np.float32) / 255 - MEAN) / STD)
  x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)
  return x, np.array([names.index(c) for c, _ in paths])


def augment(x: torch.Tensor, g: torch.Generator, flip: bool = True) -> torch.Tensor:
  """Pad 4 (edge), random 32 crop, random horizontal flip (if ``flip``) — per image."""
  n, _, s, _ = x.shape
  padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
  dy, dx = torch.randint(0, 9, (n,), generator=g), torch.randint(0, 9, (n,), generator=g)
  flips = torch.rand(n, generator=g) < 0.5
  out = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])
  return torch.where(flips[:, None, None, None], out.flip(3), out) if flip else out


def pretrain(data: str, out: str, settings: dict = SETTINGS) -> dict:
  """Writes ``out`` (.pth) and ``out``.json unless they exist with ``settings``; returns the
  json's contents."""
  meta_path = os.path.splitext(out)[0] + ".json"
  if os.path.exists(out) and os.path.exists(meta_path):
    meta = json.load(open(meta_path))
    if meta.get("settings") == settings:
      return meta
  s = settings
  torch.manual_seed(s["seed"])
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  x, y = read_folder(os.path.join(data, s["set"]), s["image_size"])
  num_classes, kept = int(y.max()) + 1, ~held_out(y, s.get("held_out_every"))
  x_val, y_val = torch.from_numpy(x[~kept]), torch.from_numpy(y[~kept])
  x, y = torch.from_numpy(x[kept]), torch.from_numpy(y[kept])
  net = torch_reference.resnet_tiny(small_images=True)
  net.fc = torch.nn.Linear(net.num_features, num_classes)
  opt = torch.optim.Adam(net.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
  steps = s["epochs"] * (len(y) // s["batch_size"])
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, s["lr"], total_steps=steps)
  g = torch.Generator().manual_seed(s["seed"])
  start, step, correct, seen = time.time(), 0, 0, 0
  net.train()
  for epoch in range(s["epochs"]):
    order = torch.randperm(len(y), generator=g)
    correct = seen = 0
    for i in range(len(y) // s["batch_size"]):
      idx = order[i * s["batch_size"]:(i + 1) * s["batch_size"]]
      logits = net.fc(net.features(augment(x[idx], g, s.get("flip", True))).mean((2, 3)))
      loss = F.cross_entropy(logits, y[idx])
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()
      step += 1
      correct += int((logits.argmax(1) == y[idx]).sum())
      seen += len(idx)
    print(f"pretrain epoch {epoch + 1}/{s['epochs']}: loss {float(loss):.3f}, "
          f"train accuracy {correct / seen:.3f}", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  torch.save(net.state_dict(), out)
  meta = {"settings": settings, "classes": num_classes, "images": len(y), "steps": steps,
          "train_accuracy_last_epoch": correct / seen,
          "seconds": round(time.time() - start, 1)}
  if len(y_val):  # The held-out images, BatchNorm's running statistics, no augmentation.
    net.eval()
    with torch.no_grad():
      pred = torch.cat([net.fc(net.features(x_val[i:i + 512]).mean((2, 3))).argmax(1)
                        for i in range(0, len(y_val), 512)])
    meta.update(held_out_images=len(y_val),
                held_out_accuracy=float((pred == y_val).float().mean()))
  json.dump(meta, open(meta_path, "w"), indent=1)
  return meta


def describe(meta: dict) -> str:
  """One line of what :func:`pretrain` returned."""
  held = (f", held-out accuracy {meta['held_out_accuracy']:.3f}"
          if "held_out_accuracy" in meta else "")
  return (f"{meta['classes']} classes, {meta['images']} images, train accuracy "
          f"{meta['train_accuracy_last_epoch']:.3f}{held}, {meta['seconds']} s")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True, help="make_sets.py's output folder")
  p.add_argument("--out", required=True, help="the .pth to write")
  p.add_argument("--corpus", default="icons", choices=sorted(PRETRAININGS))
  args = p.parse_args()
  print(f"{args.out}: {describe(pretrain(args.data, args.out, PRETRAININGS[args.corpus]))}")


if __name__ == "__main__":
  main()
