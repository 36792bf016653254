"""Every figure an accelerator run must show, in one command.

Usage: python benchmarks/accelerator/accelerator.py [--out DIR] [--smoke] [--budget_s 330]
       [--sections train,loop,torch,vit,eval,iaa,nmi,pipeline]

On one GPU/TPU (benchmarks/accelerator/run.sh sets it up on a machine without network):

* ``train``: the train step, ResNet-50 at 224 px, bf16 compute, global batch 120, for
  ``baseline``, ``idml`` (IDML-PA), ``iaa`` (synthesis on) and ``idml+iaa``;
* ``loop``: the whole train loop (``train_and_evaluate``, benchmarks/speed/bench_loop.py) against
  its bare step on the demo's IDML + IAA config: loop ÷ step with the pipeline's batches
  replayed from memory and with the real pipeline, and the XLA compile time of each
  program the loop compiles;
* ``torch``: the same IDML-PA step in PyTorch (tests/reference/idml_retrieval.py, the port
  of the official step) as the official code runs it (fp32) and as a tuned PyTorch user
  would (AMP bf16 autocast, channels-last), and the ratio of ours to each;
* ``vit``: the IDML-PA step with ViT-S/16;
* ``eval``: all retrieval metrics, exact, at SOP-test scale (60,502 × 512, 11,316 classes);
* ``iaa``: the IAA estimate + neighbor correction at SOP-train scale (59,551, 11,318);
* ``nmi``: NMI / F1 with the greedy k-means++ at SOP-test scale;
  each of these three beside the matmul floor (X Xᵀ, or X Cᵀ) measured in the same run;
* ``pipeline``: the host input pipeline (JPEG decode + random-resized crop + flip) on all
  host cores, images/s, beside the train step's images/s.

Every timing reports the first call (compile + run) apart from the median of the steady
calls after it (>= 20 for steps). Writes ``accelerator.json`` and ``accelerator.md`` to
``--out`` and prints the table. ``--smoke``: tiny sizes (and one method, ``idml+iaa``, for the
train step) that run on a CPU in about a minute (tests/test_accelerator_kit.py runs it in
CI so the script stays correct). A section that
fails is recorded with its error and the others still run; the exit status is 1 then.
Sections past ``--budget_s`` are skipped (recorded as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "benchmarks" / "speed"),
                str(ROOT / "tests")]

from common import SIZES, clustered_embeddings, recipe, steady_state, timed  # noqa: E402

from idml_jax import evaluation, iaa  # noqa: E402
from idml_jax.train.steps import Steps, make_mesh, to_global  # noqa: E402

SECTIONS = ("train", "loop", "torch", "vit", "eval", "iaa", "nmi", "pipeline")
METHODS = ("baseline", "idml", "iaa", "idml+iaa")


def _sizes(smoke: bool) -> dict:
  if smoke:
    return {"backbone": "resnet_tiny", "vit": "vit_tiny", "image": 32, "batch": 8,
            "classes": 10, "dim": 16, "steps": 3, "eval": (600, 60), "iaa": (600, 60),
            "nmi": (300, 30), "pipeline_images": 16, "pipeline_steps": 2}
  return {"backbone": "resnet50", "vit": "vit_s16", "image": 224, "batch": 120,
          "classes": 100, "dim": 512, "steps": 20, "eval": SIZES["sop_test"],
          "iaa": SIZES["sop_train"], "nmi": SIZES["sop_test"], "pipeline_images": 512,
          "pipeline_steps": 10}


def _peak_memory() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _timed(fn, repeats: int) -> dict:
  """First call (compile + run) and the median of ``repeats`` steady calls, seconds."""
  _, first, times = timed(fn, repeats)
  steady = statistics.median(times)
  return {"first_call_s": first, "compile_s": max(first - steady, 0.0), "steady_s": steady,
          "repeats": repeats}


# ----------------------------------------------------------------------------- train steps
def _step_config(method: str, backbone: str, sz: dict, smoke: bool):
  """``method``'s paper recipe (``common.RECIPES``) at the kit's network and sizes."""
  c = recipe(method)
  c.optimizer.warmup_epochs = 0
  c.batch_size = sz["batch"]
  c.data.images_per_class = 4
  c.model.backbone, c.data.image_size = backbone, sz["image"]
  c.model.embedding_dim = sz["dim"]
  c.model.dtype = "float32" if smoke else "bfloat16"
  if backbone.startswith("vit"):
    c.model.pooling = "token"
  return c


def time_train_step(method: str, backbone: str, sz: dict, smoke: bool) -> dict:
  c = _step_config(method, backbone, sz, smoke)
  steps = Steps.build(c, sz["classes"], 100, make_mesh())
  z = np.random.default_rng(0).standard_normal((4 * sz["classes"], sz["dim"]))
  y = np.repeat(np.arange(sz["classes"]), 4).astype(np.int32)
  state, plan = steady_state(steps, z.astype(np.float32), y)
  rng = np.random.default_rng(0)
  s = sz["image"]
  batch = to_global(steps.mesh, {
      "image": rng.integers(0, 255, (sz["batch"], s, s, 3), dtype=np.uint8),
      "label": (np.repeat(np.arange(sz["batch"] // 4), 4) % sz["classes"]).astype(np.int32)})
  holder = {"state": state}

  def one():
    holder["state"], m = steps.train_step(holder["state"], batch, plan, train_backbone=True)
    return m["loss"]

  out = _timed(one, sz["steps"])
  out.update(images_per_s=sz["batch"] / out["steady_s"], peak_bytes=_peak_memory(),
             backbone=backbone, batch=sz["batch"], image=s, dtype=c.model.dtype)
  return out


# ----------------------------------------------------------------------------- train loop
def time_loop(smoke: bool, row: str = "idml_iaa,ms", epochs: int = 3) -> dict:
  """The loop ÷ its bare step (bench_loop.py), and the compile time of each program."""
  import bench_loop

  step = bench_loop.bare_rate(bench_loop.config(row, epochs, smoke))
  with bench_loop.compile_times() as compiles:
    replayed = bench_loop.loop_rate(bench_loop.config(row, epochs, smoke), replay=True)
  pipeline = bench_loop.loop_rate(bench_loop.config(row, epochs, smoke), replay=False)
  return {"steady_s": 1 / step, "loop_ratio_replayed": replayed / step,
          "loop_ratio_pipeline": pipeline / step, "row": row,
          "compile_s_per_program": {k: round(sum(v), 3) for k, v in sorted(compiles.items())}}


# ----------------------------------------------------------------------------- PyTorch
def time_torch_idml_pa(sz: dict, smoke: bool, tuned: bool) -> dict:
  import torch
  import torch_reference
  from reference.idml_retrieval import Model, ProxyAnchor, Trainer

  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  backbone = torch_reference.resnet_tiny() if smoke else torch_reference.resnet50()
  model = Model(backbone, backbone.num_features, sz["dim"]).to(device)
  criterion = ProxyAnchor(sz["classes"], sz["dim"]).to(device)
  trainer = Trainer(model, criterion, lr=1e-4, weight_decay=1e-4, decay_step=10, gamma=0.5,
                    warm=0, steps_per_epoch=10**6)
  x = torch.rand(sz["batch"], 3, sz["image"], sz["image"], device=device)
  y = torch.arange(sz["batch"], device=device) // 4 % sz["classes"]
  perm = torch.randperm(sz["batch"], device=device)
  if tuned:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    forward = model.forward

    def amp_forward(inp):  # bf16 autocast for the network, the loss in fp32.
      with torch.autocast(device_type=device, dtype=torch.bfloat16):
        mu, u = forward(inp)
      return mu.float(), u.float()

    model.forward = amp_forward

  def one():
    loss = trainer.step(x, y, 0.8, perm)  # float(loss): synchronises, as ours does.
    return np.float32(loss)

  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  out = _timed(one, sz["steps"])
  out.update(images_per_s=sz["batch"] / out["steady_s"], device=device,
             torch=torch.__version__,
             peak_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None,
             mode="AMP bf16 + channels-last" if tuned else "fp32 (as the official code)")
  return out


# ----------------------------------------------------------------------------- evaluation
def _floor(a: np.ndarray, b: np.ndarray, block: int = 8192) -> float:
  """Seconds of A Bᵀ in row blocks on the device (summed, so nothing large comes back)."""
  f = jax.jit(lambda x, y: jnp.sum(x @ y.T))
  aj, bj = jnp.asarray(a), jnp.asarray(b)
  jax.block_until_ready(f(aj[:block], bj))
  t = time.perf_counter()
  jax.block_until_ready([f(aj[i:i + block], bj) for i in range(0, len(a), block)])
  return time.perf_counter() - t


def _synthetic(n: int, c: int, dim: int, smoke: bool):
  if smoke:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(c), n // c)
    x = rng.standard_normal((c, dim))[y] + rng.standard_normal((len(y), dim))
    return x.astype(np.float32), y
  name = next(k for k, v in SIZES.items() if v == (n, c))
  return clustered_embeddings(name, dim=dim, noise=2.2)


def time_eval(sz: dict, smoke: bool) -> dict:
  x, y = _synthetic(*sz["eval"], sz["dim"], smoke)
  out = _timed(lambda: evaluation.retrieval_metrics(x, y), 2)
  out["matmul_floor_s"] = _floor(x, x)
  out["recall@1"] = evaluation.retrieval_metrics(x, y)["recall@1"]
  out["shape"] = list(x.shape)
  return out


def time_iaa(sz: dict, smoke: bool) -> dict:
  x, y = _synthetic(*sz["iaa"], sz["dim"], smoke)
  c = int(y.max()) + 1
  xj, yj = jnp.asarray(x), jnp.asarray(y)
  update = jax.jit(lambda s: iaa.update(s, xj, yj, correct=True))
  stats = iaa.init(c, x.shape[1])
  out = _timed(lambda: update(stats).synthesis_covariance, 5)
  means = np.asarray(update(stats).mean)
  out["matmul_floor_s"] = _floor(means, means)  # The class × class distances.
  out["shape"], out["classes"] = list(x.shape), c
  return out


def time_nmi(sz: dict, smoke: bool) -> dict:
  x, y = _synthetic(*sz["nmi"], sz["dim"], smoke)
  c = int(y.max()) + 1
  out = _timed(lambda: evaluation.clustering_metrics(x, y, seed=0)["nmi"], 1)
  centres = x[np.random.default_rng(0).choice(len(x), c, replace=False)]
  out["matmul_floor_s"] = _floor(x, centres)  # One assignment pass.
  out["shape"], out["classes"] = list(x.shape), c
  return out


# ----------------------------------------------------------------------------- host pipeline
def time_pipeline(sz: dict) -> dict:
  from PIL import Image

  from idml_jax.data import ClassBalancedSampler, train_batches
  from idml_jax.data.sources import FileSource

  cores = os.cpu_count() or 1
  batch = min(sz["batch"], sz["pipeline_images"])
  with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(sz["pipeline_images"]):
      path = os.path.join(d, f"{i}.jpg")  # CUB-sized; smooth noise compresses like a photo.
      small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
      Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
      paths.append(path)
    src = FileSource(paths, np.arange(len(paths)) % max(batch // 4, 1))
    sampler = ClassBalancedSampler(src.labels, batch, 4, seed=0)
    it = train_batches(src, sampler, image_size=224, seed=0, start_step=0,
                       num_steps=sz["pipeline_steps"] + 1, num_threads=cores)
    next(it)
    t = time.perf_counter()
    for _ in range(sz["pipeline_steps"]):
      next(it)
    dt = time.perf_counter() - t
  return {"images_per_s": sz["pipeline_steps"] * batch / dt, "cores": cores,
          "steady_s": dt / sz["pipeline_steps"], "batch": batch}


# ----------------------------------------------------------------------------- report
def environment() -> dict:
  d = jax.devices()[0]
  env = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
         "backend": jax.default_backend(), "device": d.device_kind,
         "devices": jax.device_count(), "host_cores": os.cpu_count(),
         "python": host.python_version()}
  try:
    import torch
    env["torch"] = torch.__version__
    env["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                           else "cpu")
  except ImportError:
    env["torch"] = None
  return env


def markdown(results: dict) -> str:
  env = results["environment"]
  lines = [f"Device: {env['devices']}× {env['device']} ({env['backend']}), JAX {env['jax']}, "
           f"torch {env.get('torch')}, {env['host_cores']} host cores, {env['date']}"
           + (" — SMOKE SIZES, not figures" if results["smoke"] else ""), "",
           "| figure | steady | images/s | compile (first call − steady) | vs | peak memory |",
           "|---|---|---|---|---|---|"]
  gib = lambda b: f"{b / 2**30:.1f} GiB" if b else "—"
  ours_idml = results["figures"].get("train/idml", {}).get("images_per_s")  # IDML-PA.
  for name, r in results["figures"].items():
    if "error" in r or "skipped" in r:
      lines.append(f"| {name} | {r.get('error') or r.get('skipped')} | | | | |")
      continue
    vs = ""
    if name.startswith("torch/") and ours_idml:
      vs = f"ours (train/idml) {ours_idml / r['images_per_s']:.2f}×"
    elif "matmul_floor_s" in r:
      floor = r["matmul_floor_s"]
      vs = f"matmul floor {floor * 1e3:.1f} ms ({r['steady_s'] / floor:.1f}×)"
    elif "loop_ratio_replayed" in r:
      vs = (f"loop ÷ step {r['loop_ratio_replayed']:.2f} (input replayed), "
            f"{r['loop_ratio_pipeline']:.2f} (the pipeline)")
    elif name == "pipeline" and ours_idml:
      vs = (f"train/idml needs {ours_idml:.0f} images/s: "
            f"{ours_idml / r['images_per_s'] * r['cores']:.0f} cores at this rate")
    ips = f"{r['images_per_s']:.0f}" if "images_per_s" in r else ""
    comp = f"{r['compile_s']:.1f} s" if "compile_s" in r else ""
    lines.append(f"| {name} | {r['steady_s'] * 1e3:.1f} ms | {ips} | {comp} | {vs} | "
                 f"{gib(r.get('peak_bytes'))} |")
  for name, r in results["figures"].items():
    if "compile_s_per_program" in r:
      lines += ["", f"XLA compile time per program of {name} (the loop's first run): " + ", ".join(
          f"{k} {v:.1f} s" for k, v in r["compile_s_per_program"].items())]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=".")
  p.add_argument("--smoke", action="store_true")
  p.add_argument("--budget_s", type=float, default=330.0)
  p.add_argument("--sections", default=",".join(SECTIONS))
  args = p.parse_args(argv)
  sz = _sizes(args.smoke)
  start = time.perf_counter()
  results = {"environment": environment(), "smoke": args.smoke, "sizes": sz, "figures": {}}
  jobs = []
  for section in args.sections.split(","):
    if section not in SECTIONS:
      raise SystemExit(f"Unknown section {section!r}; valid: {', '.join(SECTIONS)}.")
    if section == "train":
      methods = METHODS[-1:] if args.smoke else METHODS  # Smoke: one compile, both paths.
      jobs += [(f"train/{m}", lambda m=m: time_train_step(m, sz["backbone"], sz, args.smoke))
               for m in methods]
    elif section == "loop":
      jobs.append(("loop/idml+iaa", lambda: time_loop(args.smoke)))
    elif section == "torch":
      jobs += [(f"torch/idml_pa_{mode}", lambda t=t: time_torch_idml_pa(sz, args.smoke, t))
               for mode, t in (("fp32", False), ("amp_channels_last", True))]
    elif section == "vit":
      jobs.append((f"vit/idml_{sz['vit']}",
                   lambda: time_train_step("idml", sz["vit"], sz, args.smoke)))
    else:
      fn = {"eval": time_eval, "iaa": time_iaa, "nmi": time_nmi,
            "pipeline": lambda s, _: time_pipeline(s)}[section]
      jobs.append((section, lambda fn=fn: fn(sz, args.smoke)))
  failed = False
  for name, job in jobs:
    if time.perf_counter() - start > args.budget_s:
      results["figures"][name] = {"skipped": f"skipped: past --budget_s={args.budget_s:.0f}"}
      continue
    try:
      results["figures"][name] = job()
    except Exception as e:  # One broken figure must not lose the others.
      failed = True
      results["figures"][name] = {"error": f"{type(e).__name__}: {e}"[:300]}
      traceback.print_exc()
    print(name, json.dumps(results["figures"][name]), flush=True)
  results["wall_s"] = time.perf_counter() - start
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "accelerator.json"), "w") as f:
    json.dump(results, f, indent=1)
  table = markdown(results)
  with open(os.path.join(args.out, "accelerator.md"), "w") as f:
    f.write(table)
  print(table)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
