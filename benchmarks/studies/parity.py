"""Max |Flax - PyTorch| of pooled features for each converted backbone (needs torch).

Usage: python benchmarks/studies/parity.py [--vit-only]

Random torchvision/Cadene-layout networks with randomised BN statistics are saved as
``.pth``, converted, and compared at 224 and 64 px; the ViTs at their real sizes (ViT-S/16,
DINOv2 ViT-S/14 with registers from its 518 px grid, CLIP ViT-B/16) from timm-layout
``.safetensors`` at 224 px: the figures of BENCHMARKS.md (the constructions of
tests/test_pretrained.py and tests/test_vit.py).
"""

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
import torch_reference  # noqa: E402
import torch_vit  # noqa: E402

from idml_jax.models import convert, get_backbone, make_backbone, pool_features  # noqa: E402

VITS = {"vit_s16": {}, "clip_vitb16": dict(pre_norm=True, act="quick_gelu", eps=1e-5),
        "dinov2_vits14_reg": dict(img_size=518, reg_tokens=4, no_embed_class=True,
                                  init_values=1e-5)}


def vit_parity():
  from safetensors.numpy import save_file
  for name, extra in VITS.items():
    v = get_backbone(name).vit
    torch.manual_seed(0)
    model = torch_vit.randomize(torch_vit.ViT(patch_size=v.patch, embed_dim=v.width,
                                              depth=v.depth, num_heads=v.heads, **extra)).eval()
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "model.safetensors")
      save_file({k: t.detach().numpy().copy() for k, t in model.state_dict().items()}, path)
      t = time.perf_counter()
      loaded = convert.load_weights(path, name)
      seconds = time.perf_counter() - t
    flax_model = make_backbone(name)
    variables = flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    variables = {"params": convert.load_into({"params": {"backbone": variables["params"]}},
                                             loaded, name)["params"]["backbone"]}
    x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    got = np.asarray(jax.jit(flax_model.apply)(variables, jnp.asarray(x)))
    with torch.no_grad():
      want = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    print(f"{name:18s} 224 px: max|diff| {np.abs(got - want).max():.2e} (max|feature| "
          f"{np.abs(want).max():.2f}); conversion {seconds:.2f} s", flush=True)

CASES = (("resnet18", torch_reference.resnet18), ("resnet50", torch_reference.resnet50),
         ("bn_inception", torch_reference.BNInception), ("googlenet", torch_reference.GoogLeNet))


def main():
  vit_parity()
  if "--vit-only" in sys.argv:
    return
  for name, make in CASES:
    torch.manual_seed(0)
    model = make().eval()
    torch_reference.randomize_batch_norm(model)
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "w.pth")
      torch.save(model.state_dict(), path)
      t = time.perf_counter()
      variables = convert.load_weights(path, name)
      seconds = time.perf_counter() - t
    apply = jax.jit(make_backbone(name).apply)
    for size in (224, 64):
      x = np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
      got = np.asarray(pool_features(apply(variables, jnp.asarray(x))))
      with torch.no_grad():
        f = model.features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
      want = (f.mean((2, 3)) + f.amax((2, 3))).numpy()
      diff = np.abs(got - want).max()
      print(f"{name:12s} {size:3d} px: max|diff| {diff:.2e} (max|feature| "
            f"{np.abs(want).max():.2f}); conversion {seconds:.2f} s", flush=True)


if __name__ == "__main__":
  main()
