"""The data layer on miniature datasets written in each real on-disk format."""

import itertools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_image
from PIL import Image
from scipy.io import savemat

from idml_jax import data
from idml_jax.data import demo, folders, samplers, specs, transforms
from idml_jax.data.pipeline import SkipCounter, eval_batches, train_batches
from idml_jax.data.sources import ArraySource
from idml_jax.models import CAFFE_BGR, IMAGENET

_img = write_image


@pytest.fixture
def cub_root(tmp_path):
  for cid in (1, 2, 100, 101, 150, 200):
    d = tmp_path / "CUB_200_2011" / "images" / f"{cid:03d}.Bird_{cid}"
    for i in range(3):
      _img(str(d / f"Bird_{cid}_{i}.jpg"), cid * 10 + i)
    (d / "._Bird_hidden.jpg").write_bytes(b"AppleDouble junk")
  return str(tmp_path)


def test_cub_folder_split_by_class_and_skips_appledouble(cub_root, caplog):
  with caplog.at_level(logging.WARNING):
    splits = folders.load_folder("cub", cub_root)
  assert len(splits["train"]) == 9 and len(splits["test"]) == 9
  assert sorted(set(splits["train"].labels)) == [0, 1, 2]
  assert all("/100.Bird_100/" in p or "/00" in p for p in splits["train"].paths)
  assert all(int(p.split("/images/")[1][:3]) > 100 for p in splits["test"].paths)
  assert not any("._" in os.path.basename(p) for p in splits["train"].paths)
  assert "9 images in 3 classes" in caplog.text and "5864 images in 100 classes" in caplog.text
  assert splits["train"].load(0).shape == (16, 20, 3)


def test_cars_mat_annotations(tmp_path):
  base = tmp_path / "cars196"
  recs = []
  for i, cls in enumerate([1, 98, 99, 196, 1, 99]):
    name = f"car_ims/{i + 1:06d}.jpg"
    _img(str(base / name), i)
    recs.append((name, cls, i % 2))  # The 'test' flag is ignored: the split is by class.
  arr = np.empty((1, len(recs)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
  for i, r in enumerate(recs):
    arr[0, i] = (np.array([r[0]]), np.array([[r[1]]], np.uint8), np.array([[r[2]]], np.uint8))
  savemat(str(base / "cars_annos.mat"), {"annotations": arr})
  splits = folders.load_folder("cars", str(tmp_path))
  assert [os.path.basename(p) for p in splits["train"].paths] == ["000001.jpg", "000002.jpg",
                                                                  "000005.jpg"]
  assert list(splits["train"].labels) == [0, 1, 0] and list(splits["test"].labels) == [0, 1, 0]


def test_sop_ebay_files(tmp_path):
  base = tmp_path / "Stanford_Online_Products"
  for split, classes in (("train", [5, 5, 7]), ("test", [9, 11, 11])):
    lines = ["image_id class_id super_class_id path"]
    for i, c in enumerate(classes):
      rel = f"bicycle_final/{c}_{i}.JPG"
      _img(str(base / rel), c * 3 + i)
      lines.append(f"{i + 1} {c} 1 {rel}")
    (base / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
  splits = folders.load_folder("sop", str(tmp_path))
  assert list(splits["train"].labels) == [0, 0, 1] and list(splits["test"].labels) == [0, 1, 1]
  assert splits["test"].load(2).shape[-1] == 3


def test_inshop_partition_shares_query_gallery_labels(tmp_path):
  base = tmp_path / "InShop"
  rows = [("img/MEN/Tees/id_00000001/01_1_front.jpg", "id_00000001", "train"),
          ("img/MEN/Tees/id_00000001/01_2_side.jpg", "id_00000001", "train"),
          ("img/WOMEN/Dresses/id_00000007/01_1_front.jpg", "id_00000007", "query"),
          ("img/WOMEN/Dresses/id_00000003/01_1_front.jpg", "id_00000003", "query"),
          ("img/WOMEN/Dresses/id_00000003/02_1_front.jpg", "id_00000003", "gallery"),
          ("img/WOMEN/Dresses/id_00000007/02_1_front.jpg", "id_00000007", "gallery")]
  for i, (p, _, _) in enumerate(rows):
    _img(str(base / "Img" / p), i)
  os.makedirs(base / "Eval")
  (base / "Eval" / "list_eval_partition.txt").write_text(
      f"{len(rows)}\nimage_name item_id evaluation_status\n" +
      "\n".join(" ".join(r) for r in rows) + "\n")
  splits = folders.load_folder("inshop", str(tmp_path))
  assert len(splits["train"]) == 2
  assert list(splits["query"].labels) == [1, 0] and list(splits["gallery"].labels) == [0, 1]


def test_image_folder_layout(tmp_path):
  for split, classes in (("train", ["cat", "dog"]), ("test", ["emu"])):
    for c in classes:
      for i in range(2):
        _img(str(tmp_path / split / c / f"{i}.png"), i)
  splits = folders.load_folder("image_folder", str(tmp_path))
  assert list(splits["train"].labels) == [0, 0, 1, 1] and list(splits["test"].labels) == [0, 0]


@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop"])
def test_missing_dataset_says_where_and_how(tmp_path, name):
  with pytest.raises(FileNotFoundError) as e:
    folders.load_folder(name, str(tmp_path))
  msg = str(e.value)
  assert specs.get_spec(name).folder in msg and "from" in msg


def test_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match="patches"):
    data.load_splits("mnist", "demo")
  with pytest.raises(ValueError, match="tfds"):
    data.load_splits("cub", "hub")


def test_tfds_source_resplits_by_label_and_caches_labels(tmp_path):
  import io

  import tensorflow_datasets as tfds

  from idml_jax.data.tfds_source import load_tfds

  class TinyBirds(tfds.core.GeneratorBasedBuilder):
    """CUB's features and TFDS's within-class train/test split, in miniature."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
          "label": tfds.features.ClassLabel(num_classes=200)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0), "test": self._generate_examples(1)}

    def _generate_examples(self, part):
      for i, label in enumerate([3, 99, 100, 150, 199]):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 5, 3), label, np.uint8)).save(buf, format="PNG")
        yield f"{part}-{i}", {"image": buf.getvalue(), "label": label}

  TinyBirds(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  splits = load_tfds("cub", str(tmp_path), tfds_name="tiny_birds")
  assert len(splits["train"]) == 4 and len(splits["test"]) == 6
  originals = {int(splits["train"].load(i)[0, 0, 0]) for i in range(4)}
  assert originals == {3, 99}
  assert {int(splits["test"].load(i)[0, 0, 0]) for i in range(6)} == {100, 150, 199}
  cached = list((tmp_path / "tiny_birds" / "1.0.0").glob("labels-*.npy"))
  assert len(cached) == 1
  with pytest.raises(FileNotFoundError, match="idml_jax.data.prepare"):
    load_tfds("cub", str(tmp_path / "empty"))


def test_class_balanced_sampler_invariants():
  labels = np.repeat(np.arange(10), [5, 5, 5, 2, 8, 5, 5, 5, 5, 5])
  s = samplers.ClassBalancedSampler(labels, batch_size=12, images_per_class=3, seed=7)
  for step in range(20):
    idx = s(step)
    classes = labels[idx].reshape(4, 3)
    assert np.all(classes == classes[:, :1])  # K consecutive rows per class.
    assert len(set(classes[:, 0])) == 4  # P distinct classes.
    for row in idx.reshape(4, 3):
      if np.sum(labels == labels[row[0]]) >= 3:
        assert len(set(row)) == 3  # Without replacement when the class has K images.
  np.testing.assert_array_equal(s(5), samplers.ClassBalancedSampler(labels, 12, 3, seed=7)(5))
  assert not np.array_equal(s(5), s(6))


def test_hosts_take_disjoint_whole_classes():
  src = ArraySource(np.zeros((60, 8, 8, 3), np.uint8), np.repeat(np.arange(12), 5))
  s = samplers.ClassBalancedSampler(src.labels, batch_size=8, images_per_class=2, seed=0)
  per_host = [next(train_batches(src, s, image_size=8, seed=0, start_step=3, num_steps=1,
                                 process_index=p, process_count=2, num_threads=2))
              for p in range(2)]
  a, b = (set(h["label"].tolist()) for h in per_host)
  assert not a & b and len(a) == len(b) == 2
  np.testing.assert_array_equal(np.concatenate([h["index"] for h in per_host]), s(3))


def test_train_batches_deterministic_and_resumable():
  src = demo.digits(size=16)["train"]
  s = samplers.ClassBalancedSampler(src.labels, batch_size=10, images_per_class=2, seed=1)
  run = lambda start, n: list(train_batches(src, s, image_size=12, seed=3, start_step=start,
                                            num_steps=n, num_threads=2))
  full, resumed = run(0, 4), run(2, 2)
  for a, b in zip(full[2:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  batch = full[0]
  assert batch["image"].shape == (10, 12, 12, 3) and batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["label"], src.labels[batch["index"]])


def test_random_sampler_covers_each_epoch_once():
  s = samplers.RandomSampler(23, batch_size=5, seed=0)
  assert s.steps_per_epoch() == 4
  seen = np.concatenate([s(i) for i in range(4)])
  assert len(set(seen.tolist())) == 20
  assert not np.array_equal(s(0), s(4))


class _Flaky(ArraySource):
  def load(self, i):
    if i % 4 == 1:
      raise OSError("truncated JPEG")
    return super().load(i)


def test_corrupt_images_are_skipped_and_counted():
  src = _Flaky(np.full((10, 8, 8, 3), 7, np.uint8), np.repeat(np.arange(5), 2))
  skipped = SkipCounter()
  batches = list(eval_batches(src, batch_size=4, image_size=8, resize_size=8, skipped=skipped,
                              num_threads=1))
  mask = np.concatenate([b["mask"] for b in batches])
  assert len(mask) == 12  # Padded to whole batches.
  np.testing.assert_array_equal(mask, [i < 10 and i % 4 != 1 for i in range(12)])
  assert skipped.count == skipped.reads == 3
  list(eval_batches(src, batch_size=4, image_size=8, resize_size=8, skipped=skipped,
                    num_threads=1))  # A second pass meets the same 3 images.
  assert skipped.count == 3 and skipped.reads == 6
  s = samplers.ClassBalancedSampler(src.labels, batch_size=4, images_per_class=2, seed=0)
  train = next(train_batches(src, s, image_size=8, seed=0, start_step=0, num_steps=1,
                             skipped=skipped, num_threads=1))
  assert np.all(train["index"] % 4 != 1)  # Replaced by readable images of the same class.
  np.testing.assert_array_equal(train["label"], src.labels[train["index"]])


def test_transforms_shapes_and_normalisation():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
  assert transforms.train_transform(img, 224, rng).shape == (224, 224, 3)
  center = transforms.eval_transform(img, 224, 256)
  assert center.shape == (224, 224, 3)
  x = np.array([[[[0, 128, 255]]]], np.uint8)
  got = np.asarray(transforms.normalize(jnp.asarray(x), IMAGENET))[0, 0, 0]
  want = (np.array([0, 128, 255]) / 255 - np.array(IMAGENET.mean)) / np.array(IMAGENET.std)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  got = np.asarray(transforms.normalize(jnp.asarray(x), CAFFE_BGR))[0, 0, 0]
  np.testing.assert_allclose(got, [255 - 104, 128 - 117, 0 - 128], rtol=1e-6)  # BGR, 0–255.
  float_in = np.asarray(transforms.normalize(jnp.asarray(x / 255.0, jnp.float32), IMAGENET))
  np.testing.assert_allclose(float_in[0, 0, 0], want, rtol=1e-6)  # Floats in [0, 1] too.


def _torchvision_eval(img, size=224, resize=256):
  """torchvision's Resize(resize) + CenterCrop(size) on a PIL image, its rules written out:
  the long side int(resize * long / short), offsets int(round((h - size) / 2))."""
  h, w = img.shape[:2]
  if h <= w:
    nh, nw = resize, int(resize * w / h)
  else:
    nh, nw = int(resize * h / w), resize
  big = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
  top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
  return big[top:top + size, left:left + size]


@pytest.mark.parametrize("hw", [(300, 451), (451, 300), (257, 258), (500, 333), (333, 500),
                                (256, 256), (299, 299), (225, 640), (1023, 767)])
def test_eval_transform_equals_torchvision_pixel_for_pixel(hw):
  img = np.random.default_rng(sum(hw)).integers(0, 255, (*hw, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.eval_transform(img, 224, 256), _torchvision_eval(img))


def test_square_eval_transform_squashes_then_crops():
  img = np.random.default_rng(1).integers(0, 255, (300, 451, 3), dtype=np.uint8)
  got = transforms.eval_transform(img, 224, 256, resize_mode="square", interpolation="lanczos")
  big = np.asarray(Image.fromarray(img).resize((256, 256), Image.LANCZOS))
  np.testing.assert_array_equal(got, big[16:240, 16:240])


def _torchvision_rrc_params(h, w, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision.transforms.RandomResizedCrop.get_params, written out."""
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return ch, cw
  return (h, int(round(h * max(ratio)))) if w / h > max(ratio) else \
      ((int(round(w / min(ratio))), w) if w / h < min(ratio) else (h, w))


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.16, 1.0)])
def test_random_resized_crop_samples_torchvisions_distribution(monkeypatch, scale):
  from scipy.stats import ks_2samp
  crops = []
  monkeypatch.setattr(transforms, "_resize",
                      lambda img, w, h, interpolation="bilinear": crops.append(img.shape[:2])
                      or np.zeros((h, w, 3), np.uint8))
  img = np.zeros((180, 420, 3), np.uint8)  # Wide: the fallback happens too.
  rng = np.random.default_rng(0)
  for _ in range(3000):
    transforms.random_resized_crop(img, 16, rng, scale=scale)
  ref_rng = np.random.default_rng(1)
  ref = [_torchvision_rrc_params(180, 420, ref_rng, scale) for _ in range(3000)]
  ours, theirs = np.asarray(crops, float), np.asarray(ref, float)
  for stat in (lambda c: c[:, 0] * c[:, 1] / (180 * 420), lambda c: np.log(c[:, 1] / c[:, 0])):
    assert ks_2samp(stat(ours), stat(theirs)).pvalue > 0.01
  area = ours[:, 0] * ours[:, 1] / (180 * 420)
  assert area.min() >= scale[0] * 0.95 and area.max() <= 1.0


def _naive_color(img, alpha, order, light):
  """The official ColorJitter (shuffled brightness/contrast/saturation lerps) then Lighting,
  one image [H, W, 3] in [0, 1], float64."""
  x = img.astype(np.float64)
  gray = lambda v: 0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2]
  for t in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][order]:
    target = (np.zeros_like(x) if t == 0 else
              np.full_like(x, gray(x).mean()) if t == 1 else np.repeat(gray(x)[..., None], 3, -1))
    x = x + alpha[t] * (target - x)
  eigval = np.array([0.2175, 0.0188, 0.0045])
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                     [-0.5836, -0.6948, 0.4203]])
  return x + (eigvec * (light * eigval)[None, :]).sum(1)


def test_color_augment_matches_the_official_jitter_and_lighting():
  rng = np.random.default_rng(2)
  imgs = rng.random((6, 5, 7, 3)).astype(np.float32)
  draws = transforms.color_draws(jax.random.PRNGKey(0), 6, 0.4, 0.1)
  got = np.asarray(transforms.color_augment(jnp.asarray(imgs), draws))
  d = jax.device_get(draws)
  assert np.abs(d["jitter_alpha"]).max() <= 0.4 and set(d["jitter_order"]) <= set(range(6))
  for i in range(6):
    want = _naive_color(imgs[i], d["jitter_alpha"][i], int(d["jitter_order"][i]),
                        d["lighting_alpha"][i])
    np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)


def test_class_fill_sampler_is_the_official_iaa_sampler():
  labels = np.repeat(np.arange(30), [1, 2, 5] * 10)
  s = samplers.ClassFillSampler(labels, batch_size=12, images_per_class=3, seed=0)
  for step in range(10):
    idx = s(step)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12  # Without replacement.
    runs = [len(list(g)) for _, g in itertools.groupby(labels[idx])]
    sizes = np.bincount(labels)
    classes = [c for c, _ in itertools.groupby(labels[idx])]
    assert len(set(classes)) == len(classes)  # Each class once, its rows together.
    for c, r in zip(classes[:-1], runs[:-1], strict=True):
      assert r == min(3, sizes[c])  # min(K, class size) rows; only the last one is cut.
  np.testing.assert_array_equal(s(4), samplers.ClassFillSampler(labels, 12, 3, seed=0)(4))


def test_demo_sets_are_class_disjoint():
  from sklearn.datasets import load_digits
  splits = data.load_splits("patches")
  train = {n.split("#")[0] for n in splits["train"].names}
  test = {n.split("#")[0] for n in splits["test"].names}
  assert train and test and not train & test
  assert splits["train"].load(0).dtype == np.uint8
  target = load_digits().target  # Digits: 0–4 train, 5–9 test.
  splits = data.load_splits("digits")
  np.testing.assert_array_equal(np.bincount(splits["train"].labels),
                                np.bincount(target[target < 5]))
  np.testing.assert_array_equal(np.bincount(splits["test"].labels),
                                np.bincount(target[target >= 5] - 5))


def test_glyph_demo_is_real_fonts_split_by_character():
  """Each class is one character drawn by >= 8 of matplotlib's fonts; no character (or a
  look-alike of one) is in both splits; Greek capital alpha, drawn as Latin A, is dropped."""
  from idml_jax.data import glyphs
  fonts = glyphs._matplotlib_fonts()
  dejavu = next(f for f in fonts if f.endswith("DejaVuSans.ttf"))
  np.testing.assert_array_equal(glyphs.render(dejavu, "A", 32), glyphs.render(dejavu, "Α", 32))
  images, chars, names = glyphs.render_glyphs(fonts, "AΑbβ", size=32, min_fonts=8,
                                              reference=dejavu)
  assert sorted(set(chars)) == ["A", "b", "β"]  # The Greek Alpha is Latin A's look-alike.
  assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
  for ch in set(chars):
    rows = [i for i, c in enumerate(chars) if c == ch]
    assert len(rows) >= 8 and len({names[i] for i in rows}) == len(rows)  # One per font.
    assert len({images[i].tobytes() for i in rows}) == len(rows)  # No repeated image.
  splits = data.load_splits("glyphs")
  chars_of = lambda s: {n.split(" ")[0] for n in s.names}
  assert chars_of(splits["train"]) and chars_of(splits["test"])
  assert not chars_of(splits["train"]) & chars_of(splits["test"])
  for split in splits.values():
    counts = np.bincount(split.labels)
    assert counts.min() >= 8 and len(counts) >= 40
    # matplotlib's LastResortHE draws one box for every Latin letter: a placeholder, left out.
    assert not any("LastResort" in n for n in split.names)
  last_resort = next(f for f in fonts if "LastResort" in f)
  assert glyphs.placeholder_font(last_resort, glyphs.font_chars(last_resort), 32)
  assert not glyphs.placeholder_font(dejavu, glyphs.font_chars(dejavu), 32)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_counted_with_worker_processes_too(tmp_path, workers):
  """Each worker process reads with its own copy of the counter: the count is made from the
  indices each batch carries, in the process that consumes it."""
  from idml_jax.data import folders
  for c in range(4):
    for i in range(4):
      path = tmp_path / "train" / f"c{c}" / f"{i}.png"
      write_image(path, seed=10 * c + i)
      if i % 2:  # 8 of the 16 training images are truncated.
        path.write_bytes(path.read_bytes()[:40])
    write_image(tmp_path / "test" / f"t{c}" / "0.png", seed=100 + c)
  src = folders.image_folder(str(tmp_path))["train"]
  sampler = data.ClassBalancedSampler(src.labels, 16, 4, seed=0)
  skipped = data.SkipCounter()
  batches = list(data.train_batches(src, sampler, image_size=8, seed=0, start_step=0,
                                    num_steps=2, num_threads=1, worker_count=workers,
                                    skipped=skipped))
  bad = {i for i, p in enumerate(src.paths) if os.path.getsize(p) == 40}
  assert len(bad) == 8 and len(batches) == 2
  assert skipped.count == 8 and skipped.total() == 8
  assert all("unreadable" not in b for b in batches)
