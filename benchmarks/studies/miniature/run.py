"""The papers in miniature: whole official runs in both implementations, and the gains table.

    python benchmarks/studies/realdata/make_sets.py --out ~/realdata                # once
    python benchmarks/studies/miniature/run.py --data ~/realdata --out miniature.jsonl \\
        [--rows parity,gains,official_gains] [--seeds 0,1,2,3,4] [--cache ~/miniature]
    python benchmarks/studies/miniature/run.py --out miniature.jsonl --table       # the tables only

1. Pretrains once (``pretrain.py``: the tiny torchvision-layout ResNet on ``icons``, PyTorch,
   cached) and converts the ``.pth`` with the project's converter
   (``python -m idml_jax.models.convert ... --backbone resnet_tiny_cifar``), as a user
   converts an ImageNet file.
2. Runs ``configs/miniature.py``'s recipes on ``glyphs`` (``--set``: or another of
   ``make_sets.py``'s sets, e.g. ``glyphs_degraded``; class-disjoint fine-tuning), from
   the converted weights: each row is (recipe, official or the paper's variant, ours or
   PyTorch, seed), appended to ``--out`` as one JSON line with its test Recall@1 and MAP@R
   at every evaluation — resumable by row. ``parity``: IDML-PA and IAA (MS) with
   ``,official``, in our loop and in the official training loops
   (``tests/reference/idml_retrieval.py``, ``tests/reference/iaa.py``: the official
   modules, optimiser groups, warm-up freezing, schedules, Mixup, estimator and synthesis)
   from the same ``.pth``, fed our pipeline's batches (same images, crops and order); what
   differs is the framework, the heads' and proxies' random draws, Mixup's λ and
   permutation, and IAA's noise. ``gains``: every recipe with the papers' variant;
   ``official_gains``: the baselines and IDML + IAA with ``,official``; ``ms_parity``: the
   official recipe's plain Multi-Similarity (no estimate, no synthesis) in both
   implementations; ``bf16``: IDML-PA and IAA (MS), ``,official``, the backbone in bfloat16;
   ``scratch``: PA and MS from randomly initialised weights, BatchNorm training (what the
   pretraining buys; recorded with ``weights: "none"``).
   ``--pretrained scripts`` pretrains on ``make_sets.py``'s ``scripts`` corpus instead of
   ``icons`` (``pretrain.PRETRAININGS``: other writing systems' letters in the same fonts).
3. ``--table``: parity (final figures, Welch's t-test, the curves) and gains (paired by
   seed: the same batches; mean ± standard error).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))  # learning_curves: the PyTorch side's helpers.
sys.path.insert(0, HERE)
import pretrain  # noqa: E402

from idml_jax.config_files import from_file  # noqa: E402

CONFIG = os.path.join(HERE, "..", "..", "..", "configs", "miniature.py")
BACKBONE = "resnet_tiny_cifar"
RECIPES = ("pa", "idml_pa", "ms", "iaa_ms", "idml_iaa_ms")
# Row group -> [(recipe, official, implementation)].
GROUPS = {
    "parity": [("idml_pa", True, "ours"), ("idml_pa", True, "pytorch"),
               ("iaa_ms", True, "ours"), ("iaa_ms", True, "pytorch")],
    "idml_parity": [("idml_pa", True, "ours"), ("idml_pa", True, "pytorch")],
    "iaa_parity": [("iaa_ms", True, "ours"), ("iaa_ms", True, "pytorch")],
    "gains": [(r, False, "ours") for r in RECIPES],
    "official_gains": [("pa", True, "ours"), ("ms", True, "ours"),
                       ("idml_iaa_ms", True, "ours")],
    # The plain Multi-Similarity of the official IAA recipe (no estimate, no synthesis) in
    # both implementations: does the IAA gap open in plain MS training?
    "ms_parity": [("ms", True, "ours"), ("ms", True, "pytorch")],
    # The official recipes with the backbone in bfloat16 (``model.dtype``), against float32.
    "bf16": [("idml_pa", True, "ours_bf16"), ("iaa_ms", True, "ours_bf16")],
    # The baselines from random weights: what the pretraining buys.
    "scratch": [("pa", False, "ours_scratch"), ("ms", False, "ours_scratch")],
}
PARITY = ("idml_pa", "iaa_ms", "ms")
GAINS = (("idml_pa", "pa", "IDML-PA − PA"), ("iaa_ms", "ms", "MS + IAA − MS"),
         ("idml_iaa_ms", "ms", "IDML + IAA − MS"), ("idml_iaa_ms", "iaa_ms",
                                                    "IDML + IAA − MS + IAA"))


def config(recipe: str, official: bool, data: str, weights: str, seed: int,
           set_name: str = "glyphs"):
  c = from_file(f"{CONFIG}:{recipe}{',official' if official else ''}")
  c.data.data_dir = os.path.join(data, set_name)
  c.model.pretrained = weights
  c.data.num_threads = 2
  c.seed = seed
  return c


def weights_id(pth: str) -> str:
  """What a row records of the pretrained weights it started from: the ``.pth``'s SHA-256,
  12 hex digits (PyTorch's pretraining is not bit-reproducible across machines, so rows
  compare only with rows from the same file)."""
  with open(pth, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:12]


def prepare(data: str, cache: str, corpus: str = "icons") -> tuple[str, str]:
  """The ``.pth`` pretrained on ``corpus`` (cached), and its conversion with the project's
  converter (a folder)."""
  from idml_jax.models import convert
  pth = os.path.join(cache, f"{corpus}_resnet_tiny.pth")
  meta = pretrain.pretrain(data, pth, pretrain.PRETRAININGS[corpus])
  print(f"pretrained: {pth} ({pretrain.describe(meta)})", flush=True)
  out = os.path.splitext(pth)[0]
  if not os.path.exists(out):
    convert.main([pth, out, "--backbone", BACKBONE])
  return pth, out


# ------------------------------------------------------------------------------------ ours


def ours(c) -> dict:
  from idml_jax.train import loop
  from idml_jax.train.reporting import read_metrics
  from idml_jax.train.workdir import Workdir
  with tempfile.TemporaryDirectory() as w:
    results = loop.train_and_evaluate(c, w)
    rows = [r for r in read_metrics(Workdir(w)) if "eval/recall@1" in r]
  spe = results["steps"] / c.num_epochs
  curve = {0: {k: results["untrained"][k] for k in ("recall@1", "map@r")}}
  curve.update({round(r["step"] / spe): {"recall@1": r["eval/recall@1"],
                                         "map@r": r["eval/map@r"]} for r in rows})
  return curve


# --------------------------------------------------------------------------------- PyTorch


def _torch_setup(c):
  import torch

  from idml_jax import data
  from idml_jax.models import get_backbone
  torch.manual_seed(c.seed)
  torch.set_num_threads(2)
  splits = data.load_splits(c.data.name, c.data.source, c.data.data_dir)
  sampler = data.SAMPLERS[c.data.sampler](splits["train"].labels, c.batch_size,
                                          c.data.images_per_class, c.seed)
  spe = sampler.steps_per_epoch(c.max_steps_per_epoch or None)
  return splits, sampler, spe, get_backbone(c.model.backbone).input_spec


def _backbone(pth: str):
  import torch
  import torch_reference
  net = torch_reference.resnet_tiny(small_images=True)
  sd = torch.load(pth, map_location="cpu", weights_only=True)
  net.fc = torch.nn.Linear(net.num_features, sd["fc.weight"].shape[0])
  net.load_state_dict(sd)
  return net


def _evaluate(c, embed, splits, spec) -> dict:
  from learning_curves import torch_test_embeddings
  from torch.nn import functional as F

  from idml_jax import evaluation
  embs, labels = torch_test_embeddings(c, lambda x: F.normalize(embed(x), dim=1),
                                       splits["test"], spec)
  m = evaluation.retrieval_metrics(embs, labels, recall_ks=(1,))
  return {"recall@1": m["recall@1"], "map@r": m["map@r"]}


def pytorch(c, pth: str) -> dict:
  """The official training loop of ``c``'s recipe (IDML-PA or IAA, official), whole run."""
  import torch
  from learning_curves import _to_torch
  from reference import iaa as ref_iaa
  from reference import idml_retrieval as ref_idml

  from idml_jax import data
  splits, sampler, spe, spec = _torch_setup(c)
  to_torch = functools.partial(_to_torch, spec=spec)
  num_classes = int(splits["train"].labels.max()) + 1
  dim, o = c.model.embedding_dim, c.optimizer
  net = _backbone(pth)
  if c.method == "idml":
    model = ref_idml.Model(net, net.num_features, dim)
    trainer = ref_idml.Trainer(
        model, ref_idml.ProxyAnchor(num_classes, dim, c.loss.kwargs.margin,
                                    c.loss.kwargs.alpha),
        o.lr, o.weight_decay, o.decay_epochs, o.gamma, o.warmup_epochs, spe,
        o.proxy_lr_mult, o.clip_value)
    embed = lambda x: model(x)[0]  # noqa: E731
  elif c.method in ("iaa", "baseline"):  # The official IAA loop; plain MS never synthesises.
    model = ref_iaa.Embedding(net, net.num_features, dim)
    estimator = ref_iaa.Estimator(num_classes, dim, c.iaa.momentum)
    start = c.iaa.start_epoch if c.method == "iaa" else c.num_epochs + 1
    trainer = ref_iaa.Trainer(model, estimator, ref_iaa.multi_similarity, o.lr,
                              o.weight_decay, list(o.boundaries), o.gamma, spe,
                              c.num_epochs, start, c.iaa.update_every, c.iaa.strength)
    embed = model
  else:
    raise ValueError(f"No official PyTorch loop for method {c.method!r}.")
  model.eval()  # BatchNorm in eval mode throughout (bn_freeze / fix_batchnorm); no dropout.
  rng, gen = np.random.default_rng(c.seed), torch.Generator().manual_seed(c.seed)
  train_tf = data.transforms.from_config(c)[0]
  curve = {0: _evaluate(c, embed, splits, spec)}
  total = c.num_epochs * spe
  for step, b in enumerate(data.train_batches(
      splits["train"], sampler, image_size=c.data.image_size, seed=c.seed, start_step=0,
      num_steps=total, num_threads=2, transform=train_tf)):
    x, y = to_torch(b["image"]), torch.from_numpy(b["label"].astype(np.int64))
    if c.method == "idml":
      trainer.step(x, y, float(rng.beta(c.mixing.alpha, c.mixing.alpha)),
                   torch.from_numpy(rng.permutation(len(y))))
    else:
      if trainer.estimate_due():
        epoch = step // spe
        feats, labels = [], []
        with torch.no_grad():
          for e in data.eval_batches(splits["train"], batch_size=c.eval.batch_size,
                                     image_size=c.data.image_size,
                                     resize_size=c.data.resize_size, num_threads=2,
                                     transform=train_tf, seed=[c.seed, epoch]):
            feats.append(model(to_torch(e["image"]))[torch.from_numpy(e["mask"])])
            labels.append(torch.from_numpy(e["label"][e["mask"]].astype(np.int64)))
        estimator.global_update(torch.cat(feats), torch.cat(labels))
      noise = torch.randn((c.iaa.num_synthetic, len(y), dim), generator=gen)
      trainer.step(x, y, noise)
    if (step + 1) % (c.eval.every_epochs * spe) == 0:
      curve[(step + 1) // spe] = _evaluate(c, embed, splits, spec)
  return curve


# ----------------------------------------------------------------------------------- table


def _load(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path) if line.strip()]


def _key(r) -> tuple:
  return r["recipe"], r["official"], r["impl"], r["seed"], r["weights"], r.get("set", "glyphs")


def _ms(vs: list[float]) -> str:
  return (f"{100 * statistics.mean(vs):.1f} ± {100 * statistics.stdev(vs):.1f}"
          if len(vs) > 1 else f"{100 * vs[0]:.1f}")


def _welch_p(a: list[float], b: list[float]) -> float:
  from scipy import stats
  return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _final(rows, recipe, official, impl, metric) -> dict[int, float]:
  return {r["seed"]: r["final"][metric] for r in rows
          if (r["recipe"], r["official"], r["impl"]) == (recipe, official, impl)}


def table(rows: list[dict]) -> str:
  out = ["Parity (`,official`): final test figures (%), mean ± sd over seeds; Welch's t-test.",
         "", "| recipe | metric | ours | PyTorch official | ours − PyTorch | p | seeds |",
         "|---|---|---|---|---|---|---|"]
  for recipe in PARITY:
    for metric in ("recall@1", "map@r"):
      a = list(_final(rows, recipe, True, "ours", metric).values())
      b = list(_final(rows, recipe, True, "pytorch", metric).values())
      if len(a) > 1 and len(b) > 1:
        out.append(f"| {recipe} | {metric} | {_ms(a)} | {_ms(b)} | "
                   f"{100 * (statistics.mean(a) - statistics.mean(b)):+.1f} | "
                   f"{_welch_p(a, b):.2f} | {len(a)} / {len(b)} |")
  out += ["", "Curves (`,official`): test Recall@1 (%) per epoch, mean ± sd; `in` = each mean "
          "inside the other's ±1 sd; p: Welch's t-test at that epoch.", "",
          "| recipe | epoch | ours | PyTorch | ours − PyTorch | in | p |",
          "|---|---|---|---|---|---|---|"]
  for recipe in PARITY:
    curves = {impl: [r["curve"] for r in rows if (r["recipe"], r["official"], r["impl"]) ==
                     (recipe, True, impl)] for impl in ("ours", "pytorch")}
    if not all(len(v) > 1 for v in curves.values()):
      continue
    epochs = sorted(set.intersection(*(set(cv) for v in curves.values() for cv in v)),
                    key=int)
    for e in epochs:
      a = [cv[e]["recall@1"] for cv in curves["ours"]]
      b = [cv[e]["recall@1"] for cv in curves["pytorch"]]
      ma, sa, mb, sb = (statistics.mean(a), statistics.stdev(a), statistics.mean(b),
                        statistics.stdev(b))
      inside = abs(ma - mb) <= sa and abs(ma - mb) <= sb
      out.append(f"| {recipe} | {e} | {_ms(a)} | {_ms(b)} | {100 * (ma - mb):+.1f} | "
                 f"{'yes' if inside else 'no'} | {_welch_p(a, b):.2f} |")
  out += ["", "bfloat16 (`,official`, ours): the backbone in bfloat16 against float32, final "
          "test figures (%); Welch's t-test.", "",
          "| recipe | metric | float32 | bfloat16 | bf16 − f32 | p | seeds |",
          "|---|---|---|---|---|---|---|"]
  for recipe in ("idml_pa", "iaa_ms"):
    for metric in ("recall@1", "map@r"):
      fa = _final(rows, recipe, True, "ours", metric)
      fb = _final(rows, recipe, True, "ours_bf16", metric)
      a, b = [fa[s] for s in sorted(fa) if s in fb], [fb[s] for s in sorted(fb) if s in fa]
      if len(b) > 1:
        out.append(f"| {recipe} | {metric} | {_ms(a)} | {_ms(b)} | "
                   f"{100 * (statistics.mean(b) - statistics.mean(a)):+.1f} | "
                   f"{_welch_p(a, b):.2f} | {len(b)} |")
  out += ["", "Gains (ours): final test figures (%), paired by seed (the same batches); "
          "mean ± standard error of the per-seed differences.", "",
          "| variant | gain | Recall@1 | MAP@R | seeds |", "|---|---|---|---|---|"]
  for official in (False, True):
    for a, b, name in GAINS:
      cells = []
      for metric in ("recall@1", "map@r"):
        fa, fb = (_final(rows, a, official, "ours", metric),
                  _final(rows, b, official, "ours", metric))
        d = [fa[s] - fb[s] for s in sorted(set(fa) & set(fb))]
        cells.append(f"{100 * statistics.mean(d):+.1f} ± "
                     f"{100 * statistics.stdev(d) / math.sqrt(len(d)):.1f}"
                     if len(d) > 1 else "—")
        n = len(d)
      if n:
        out.append(f"| {'official' if official else 'paper'} | {name} | {cells[0]} | "
                   f"{cells[1]} | {n} |")
  out += ["", "Each recipe (ours): final and untrained test figures (%), mean ± sd.", "",
          "| recipe | variant | untrained R@1 | Recall@1 | MAP@R | s / run | seeds |",
          "|---|---|---|---|---|---|---|"]
  variants = (("paper", False, "ours"), ("official", True, "ours"),
              ("paper, from random weights", False, "ours_scratch"))
  for variant, official, impl in variants:
    for recipe in RECIPES:
      rs = [r for r in rows if (r["recipe"], r["official"], r["impl"]) ==
            (recipe, official, impl)]
      if rs:
        out.append(f"| {recipe} | {variant} | "
                   f"{_ms([r['curve']['0']['recall@1'] for r in rs])} | "
                   f"{_ms([r['final']['recall@1'] for r in rs])} | "
                   f"{_ms([r['final']['map@r'] for r in rs])} | "
                   f"{statistics.mean(r['seconds'] for r in rs):.0f} | {len(rs)} |")
  return _without_empty_tables(out)


def _without_empty_tables(lines: list[str]) -> str:
  """The blocks of ``lines`` (separated by empty lines), less each table without a row and
  its title."""
  blocks, current = [], []
  for line in [*lines, ""]:
    if line:
      current.append(line)
    elif current:
      blocks, current = [*blocks, current], []
  kept = []
  for block in blocks:
    if block[0].startswith("|") and len(block) <= 2:  # A header and its rule only.
      if kept and not kept[-1][0].startswith("|"):
        kept.pop()
      continue
    kept.append(block)
  return "\n\n".join("\n".join(b) for b in kept)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data", help="make_sets.py's output folder (icons, glyphs)")
  p.add_argument("--set", default="glyphs", help="the set to fine-tune on (make_sets.py's)")
  p.add_argument("--out", required=True, help="JSON lines, one per row (appended)")
  p.add_argument("--rows", default="parity,gains,official_gains")
  p.add_argument("--seeds", default="0,1,2,3,4")
  p.add_argument("--pretrained", default="icons", choices=sorted(pretrain.PRETRAININGS),
                 help="the pretraining corpus (pretrain.py)")
  p.add_argument("--cache", default=os.path.expanduser("~/.cache/idml_jax/miniature"))
  p.add_argument("--table", action="store_true")
  args = p.parse_args()
  if args.table:
    rows = _load(args.out)
    where = lambda r: (r["weights"], r.get("set", "glyphs"))  # noqa: E731  (rows before --set)
    for w, set_name in dict.fromkeys(where(r) for r in rows):
      group = [r for r in rows if where(r) == (w, set_name)]
      print(f"## {set_name}, pretrained weights {w} ({len(group)} rows)\n\n"
            f"{table(group)}\n")
    return
  if not args.data:
    p.error("--data is needed to run (or --table to print).")
  import jax  # A persistent compilation cache: later rows and seeds skip XLA's compile.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.cache, "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  pth, weights = prepare(args.data, args.cache, args.pretrained)
  pretrained_id = weights_id(pth)
  done = {_key(r) for r in _load(args.out)}
  todo = [(recipe, official, impl, int(seed)) for seed in args.seeds.split(",")
          for group in args.rows.split(",") for recipe, official, impl in GROUPS[group]]
  for recipe, official, impl, seed in todo:
    wid = "none" if impl == "ours_scratch" else pretrained_id
    if (recipe, official, impl, seed, wid, args.set) in done:
      continue
    done.add((recipe, official, impl, seed, wid, args.set))
    c = config(recipe, official, args.data, weights, seed, args.set)
    if impl == "ours_bf16":
      c.model.dtype = "bfloat16"
    if impl == "ours_scratch":  # Random weights: no statistics to freeze, BatchNorm trains.
      c.model.pretrained, c.model.batch_norm = "", "train"
    t = time.time()
    curve = ours(c) if impl.startswith("ours") else pytorch(c, pth)
    curve = {str(e): v for e, v in curve.items()}
    row = {"recipe": recipe, "official": official, "impl": impl, "seed": seed, "weights": wid,
           "set": args.set, "epochs": c.num_epochs, "curve": curve,
           "final": curve[str(c.num_epochs)], "seconds": round(time.time() - t, 1)}
    with open(args.out, "a") as f:
      f.write(json.dumps(row) + "\n")
    print(f"{recipe}{',official' if official else ''} {impl} seed {seed}: R@1 "
          f"{row['final']['recall@1']:.4f} MAP@R {row['final']['map@r']:.4f} "
          f"(untrained {curve['0']['recall@1']:.4f}), {row['seconds']} s", flush=True)


if __name__ == "__main__":
  main()
