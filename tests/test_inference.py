"""From a trained workdir to a retrieval service: restore, embed a folder, search it."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import tiny
from PIL import Image

from idml_jax import data, inference
from idml_jax.data import transforms
from idml_jax.index import GalleryIndex
from idml_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  loop.train_and_evaluate(tiny(method="idml", loss="proxy_anchor"), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  src = data.load_splits("digits")["test"]
  for i in range(12):
    sub = folder / f"class{src.labels[i]}"
    sub.mkdir(exist_ok=True)
    Image.fromarray(src.load(i)).save(sub / f"{i:02d}.png")
  (folder / "notes.txt").write_text("not an image")
  return folder


def test_embed_folder_matches_the_model_applied_directly(trained_workdir, image_folder):
  trained = inference.load(str(trained_workdir))
  emb = inference.embed_folder(trained, str(image_folder))
  names = sorted(os.path.relpath(os.path.join(r, f), image_folder)
                 for r, _, fs in os.walk(image_folder) for f in fs if f.endswith(".png"))
  assert list(emb["names"]) == names
  cfg = trained.config
  images = np.stack([transforms.eval_transform(
      np.asarray(Image.open(image_folder / n).convert("RGB")), cfg.data.image_size,
      cfg.data.resize_size) for n in names])
  variables = jax.device_get(trained.variables)
  out = trained.embedder.model.apply({"params": variables["params"]["model"],
                                      "batch_stats": variables["batch_stats"]},
                                     transforms.normalize(images, trained.embedder.spec))
  np.testing.assert_allclose(emb["semantic"], out["semantic"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(emb["uncertainty_norm"],
                             np.linalg.norm(out["uncertainty"], axis=-1), rtol=1e-4)


def test_load_names_the_fix():
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    inference.load("/nonexistent")
  with pytest.raises(FileNotFoundError, match="No images"):
    inference.image_files(ROOT + "/configs")


@pytest.mark.parametrize("approximate", [False, True])
def test_gallery_index_equals_brute_force(approximate):
  rng = np.random.default_rng(0)  # Clustered, as trained embeddings are.
  centers = rng.standard_normal((50, 24))
  gallery = centers[rng.integers(0, 50, 1500)] + 0.3 * rng.standard_normal((1500, 24))
  queries = centers[rng.integers(0, 50, 30)] + 0.3 * rng.standard_normal((30, 24))
  index = GalleryIndex(gallery, max_k=10, backend="approximate" if approximate else "exact_host")
  scores, idx = index.search(queries, 5)
  g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  want = np.argsort(-(q @ g.T), axis=1)[:, :5]
  if approximate:  # Recall of the true top-5.
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(idx, want, strict=True)]) > 0.9
  else:
    np.testing.assert_array_equal(idx, want)
  np.testing.assert_allclose(scores[:, 0], np.sum(q * g[idx[:, 0]], axis=1), rtol=1e-5)
  with pytest.raises(ValueError, match="must be in 1..10"):
    index.search(queries, 11)


def test_an_approximate_index_finds_the_same_neighbors_on_every_build():
  """ScaNN's partitioning starts its k-means from a random draw by default, so two builds of
  one gallery answered differently (the recall of the test above moved between 0.90 and 0.95
  from run to run); k-means++ starts make the build a function of the gallery."""
  rng = np.random.default_rng(1)
  centers = rng.standard_normal((50, 24))
  gallery = centers[rng.integers(0, 50, 1500)] + 0.3 * rng.standard_normal((1500, 24))
  queries = centers[rng.integers(0, 50, 30)] + 0.3 * rng.standard_normal((30, 24))
  first, *others = [GalleryIndex(gallery, max_k=10, backend="approximate").search(queries, 5)
                    for _ in range(4)]
  for scores, idx in others:
    np.testing.assert_array_equal(idx, first[1])
    np.testing.assert_array_equal(scores, first[0])


def test_embed_and_search_commands(trained_workdir, image_folder, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = tmp_path / "emb.npz"
  subprocess.run([sys.executable, "-m", "idml_jax.embed", f"--workdir={trained_workdir}",
                  f"--images={image_folder}", f"--out={out}"], check=True, env=env, cwd=ROOT,
                 capture_output=True)
  emb = np.load(out)
  assert emb["semantic"].shape == (12, 16) and len(emb["names"]) == 12
  result = subprocess.run([sys.executable, "-m", "idml_jax.search", f"--gallery={out}", "--k=3",
                           f"--out={tmp_path / 'nn.json'}"], check=True, env=env, cwd=ROOT,
                          capture_output=True, text=True)
  first = result.stdout.splitlines()[0]
  assert first.startswith(str(emb["names"][0]) + " -> ") and first.count("(") == 3
  assert str(emb["names"][0]) not in first.split("->")[1]  # Its own entry is left out.


def _search(tmp_path, gallery, *args, queries=None):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  np.savez(tmp_path / "g.npz", semantic=gallery, names=np.arange(len(gallery)).astype(str))
  extra = []
  if queries is not None:
    np.savez(tmp_path / "q.npz", semantic=queries, names=np.arange(len(queries)).astype(str))
    extra = [f"--queries={tmp_path / 'q.npz'}"]
  return subprocess.run([sys.executable, "-m", "idml_jax.search", f"--gallery={tmp_path / 'g.npz'}",
                         *extra, *args], env=env, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args, queries, nan_row, expect", [
    (["--k=0"], None, False, "--k=0 must be in 1..39"),
    (["--k=-2"], None, False, "--k=-2 must be in 1..39"),
    (["--k=100"], None, False, "--k=100 must be in 1..39 (the gallery has 40 images"),
    (["--k=3"], np.ones((2, 5), np.float32), False, "must be [Q, 8] like the gallery"),
    (["--k=3"], None, True, "gallery embeddings contain NaN/inf in 1 of 40 rows"),
])
def test_search_validates_its_arguments_in_the_users_terms(tmp_path, args, queries, nan_row,
                                                           expect):
  gallery = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
  if nan_row:
    gallery[7, 2] = np.nan
  out = _search(tmp_path, gallery, *args, queries=queries)
  assert out.returncode != 0 and expect in out.stderr, out.stderr
  assert "Traceback" not in out.stderr


def test_embed_refuses_a_missing_output_folder_before_any_work(trained_workdir, image_folder,
                                                               tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", "idml_jax.embed", f"--workdir={trained_workdir}",
                        f"--images={image_folder}", f"--out={tmp_path / 'missing' / 'e.npz'}"],
                       env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0 and "does not exist; create it first" in out.stderr
  assert "checkpoint" not in out.stdout  # Nothing was embedded.


def test_embed_refuses_a_non_finite_uncertainty_and_stores_nothing(trained_workdir, image_folder,
                                                                   tmp_path):
  script = textwrap.dedent("""
      import sys
      import numpy as np
      from absl import app
      from idml_jax import embed, inference
      real = inference.embed_folder
      def broken(*args, **kwargs):  # A model whose uncertainty head overflowed on one image.
        emb = real(*args, **kwargs)
        emb["uncertainty_norm"][0] = np.nan
        return emb
      inference.embed_folder = broken
      app.run(embed.main)
  """)
  out_file = tmp_path / "e.npz"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", script, f"--workdir={trained_workdir}",
                        f"--images={image_folder}", f"--out={out_file}"], env=env, cwd=ROOT,
                       capture_output=True, text=True)
  lines = [line for line in out.stderr.splitlines() if line.startswith("embed:")]
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert len(lines) == 1 and "The uncertainty_norm outputs" in lines[0], out.stderr[-2000:]
  assert "NaN/inf in 1 of 12 rows" in lines[0] and not out_file.exists()


def test_embed_on_a_folder_without_images_answers_before_loading_a_model(trained_workdir,
                                                                         tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", "idml_jax.embed", f"--workdir={trained_workdir}",
                        f"--images={tmp_path / 'empty'}", f"--out={tmp_path / 'e.npz'}"],
                       env=env, cwd=ROOT, capture_output=True, text=True)
  lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
  assert out.returncode != 0 and len(lines) == 1, lines[:5]
  assert lines[0].startswith("embed: No images") and not (tmp_path / "e.npz").exists()
