"""Max |Flax - PyTorch| of pooled features for each converted backbone (needs torch).

Usage: python benchmarks/parity.py

Random torchvision/Cadene-layout networks with randomised BN statistics are saved as
``.pth``, converted, and compared at 224 and 64 px: the figures of BENCHMARKS.md (the
same construction as tests/test_pretrained.py).
"""

import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import torch_reference  # noqa: E402

from idml_jax.models import convert, make_backbone, pool_features  # noqa: E402

CASES = (("resnet18", torch_reference.resnet18), ("resnet50", torch_reference.resnet50),
         ("bn_inception", torch_reference.BNInception), ("googlenet", torch_reference.GoogLeNet))


def main():
  for name, make in CASES:
    torch.manual_seed(0)
    model = make().eval()
    torch_reference.randomize_batch_norm(model)
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "w.pth")
      torch.save(model.state_dict(), path)
      t = time.perf_counter()
      variables = convert.load(path, name)
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
