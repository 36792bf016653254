"""Test set-up: 8 forced host devices so sharding tests run on any CPU; shared helpers."""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The training tests compile the same small programs many times (fresh runs, resumes, the
# entry point in subprocesses, the notebook's kernel): a persistent compilation cache, set
# through the environment so child processes share it, turns the repeats into cache hits.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "idml_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402, F401  (initialised with the settings above)
import ml_collections  # noqa: E402

from idml_jax import config as config_lib  # noqa: E402
from idml_jax import config_files, methods  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(__file__))


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """``configs/<name>``'s ``get_config(arg)``."""
  spec = os.path.join(ROOT, "configs", name)
  return config_files.from_file(f"{spec}:{arg}" if arg else spec)


def override(c: ml_collections.ConfigDict, **kw) -> ml_collections.ConfigDict:
  """``override(c, iaa__start_epoch=1)`` sets ``c.iaa.start_epoch = 1``."""
  for k, v in kw.items():
    node = c
    *path, last = k.split("__")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def tiny(method="idml+iaa", loss="multi_similarity", **kw) -> ml_collections.ConfigDict:
  """A seconds-long retrieval config on the digits (16 px, 16-d, 2 epochs × 2 steps); IDML
  methods with their Mixup."""
  c = config_files.runlocal(config_lib.default_config())
  c.method, c.loss.name = method, loss
  c.mixing.kind = "mixup" if methods.METHODS[method].introspective else "none"  # IDML's Mixup.
  c.data.source, c.data.name = "demo", "digits"
  c.data.image_size = c.data.resize_size = 16
  c.data.num_threads = 2
  c.data.images_per_class = 4  # Digits' train split has 5 classes: 4 × 4 per batch.
  c.model.embedding_dim = 16
  c.eval.batch_size = 64
  c.optimizer.lr = 1e-3
  override(c, **kw)
  return c


def write_image(path, seed: int, size=(20, 16)) -> None:
  """A random RGB image file (``size`` = width, height), its folders created."""
  import numpy as np
  from PIL import Image
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(str(path))


def write_cub(root, classes_per_split: int = 8, images_per_class: int = 6, size=(40, 36)):
  """A miniature ``CUB_200_2011/images/NNN.Name/*.jpg`` folder: classes 1.. train, 101..
  test. Images of a class share a colour, so a little training separates them."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for cid in [*range(1, classes_per_split + 1), *range(101, 101 + classes_per_split)]:
    colour = rng.integers(0, 255, 3)
    d = os.path.join(str(root), "CUB_200_2011", "images", f"{cid:03d}.Bird_{cid}")
    os.makedirs(d, exist_ok=True)
    for i in range(images_per_class):
      noise = rng.integers(-60, 60, (size[1], size[0], 3))
      Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(
          os.path.join(d, f"Bird_{cid}_{i}.jpg"))
  return str(root)
