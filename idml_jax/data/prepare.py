"""Prepare a TFDS dataset as array_record (needs TensorFlow: ``pip install -e .[tf]``).

    python -m idml_jax.data.prepare cub --data_dir ~/tensorflow_datasets
    python -m idml_jax.data.prepare cars --manual_dir ~/archives   # car_ims.tgz, cars_annos.mat
    python -m idml_jax.data.prepare sop --manual_dir ~/archives    # Stanford_Online_Products.zip
    python -m idml_jax.data.prepare cifar10     # (cifar100) downloaded by TFDS
    python -m idml_jax.data.prepare imagenet --manual_dir ~/archives  # ILSVRC2012_img_*.tar

The Cars196 and SOP download URLs in TFDS are dead (tensorflow/datasets#4932, #5053,
#5656): put the archives you already have in ``--manual_dir``; they are registered
under the URLs TFDS expects, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os

from idml_jax.data import specs


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
  try:
    import tensorflow  # noqa: F401  TFDS needs it to encode while preparing.
  except ImportError as e:
    raise ImportError("Preparing TFDS datasets needs TensorFlow: `pip install -e .[tf]` "
                      "(tensorflow-cpu~=2.20.0; newer versions break `import scann`).") from e
  import tensorflow_datasets as tfds
  spec = specs.CLASSIFICATION.get(name) or specs.get_spec(name)
  if spec.tfds_name is None:
    raise ValueError(f"{name} has no TFDS builder; use its folder layout: {spec.how_to_get}.")
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
  config = tfds.download.DownloadConfig(manual_dir=os.path.expanduser(manual_dir)
                                        if manual_dir else None)
  builder.download_and_prepare(download_config=config)
  return builder.data_dir


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("name", choices=[n for n, s in specs.SPECS.items() if s.tfds_name]
                 + list(specs.CLASSIFICATION))
  p.add_argument("--data_dir", default=None)
  p.add_argument("--manual_dir", default=None)
  args = p.parse_args(argv)
  print("Prepared in", prepare(args.name, args.data_dir, args.manual_dir))


if __name__ == "__main__":
  main()
