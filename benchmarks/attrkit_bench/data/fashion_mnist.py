"""Fashion-MNIST from the gzip IDX files of the Debian package ``dataset-fashion-mnist``.

CIFAR-10, the seed papers' image set for convolutional classifiers, ships in no package
that installs offline; Fashion-MNIST (Xiao et al. 2017: 70,000 greyscale 28×28 images of
clothing in 10 classes, harder than MNIST digits) does, and is the stand-in. The files are
read with numpy; nothing is downloaded. ``ATTRKIT_FASHION_MNIST`` names another folder
holding the same four files.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from attrkit import AttrkitError

__all__ = ["CLASSES", "DEFAULT_ROOT", "ENV_VAR", "FILES", "FashionMNISTFormatError", "FashionMNISTMissingError",
           "load_fashion_mnist", "read_idx"]

#: The name of each label (Xiao et al. 2017).
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Where ``apt-get install -y dataset-fashion-mnist`` puts the files.
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming another folder with the four files.
ENV_VAR = "ATTRKIT_FASHION_MNIST"
#: ``(images, labels)`` file names of each split, training split first.
FILES = (
    ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
)
#: IDX magic numbers of unsigned-byte arrays: 0x0000 08 then the number of dimensions.
_MAGIC = {1: 0x00000801, 3: 0x00000803}


class FashionMNISTMissingError(AttrkitError, ImportError):
    """The Fashion-MNIST files are not where the loader looks."""


class FashionMNISTFormatError(AttrkitError, ValueError):
    """A file is not the uint8 IDX array it should be."""


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One gzip-compressed IDX file of unsigned bytes.

    Args:
        path: the ``.gz`` file.
        ndim: expected number of dimensions (1 for labels, 3 for images).

    Returns:
        ``uint8`` array of the shape the header gives (``[n]`` or ``[n, rows, cols]``).

    Raises:
        FashionMNISTFormatError: wrong magic number, or a size that does not match the header.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FashionMNISTFormatError(f"{path}: {len(raw)} bytes, shorter than an IDX header of {ndim} dimensions")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        raise FashionMNISTFormatError(
            f"{path}: magic number {magic:#010x}, expected {_MAGIC[ndim]:#010x} (a uint8 IDX array of {ndim} "
            f"dimensions); reinstall the files: apt-get install --reinstall -y dataset-fashion-mnist"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise FashionMNISTFormatError(f"{path}: header says shape {shape}, but the file holds {data.size} values")
    return data.reshape(shape)


def _root(root: str | os.PathLike | None) -> Path:
    folder = Path(root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT)
    missing = [name for pair in FILES for name in pair if not (folder / name).is_file()]
    if missing:
        raise FashionMNISTMissingError(
            f"Fashion-MNIST files not found in {folder} (missing: {', '.join(missing)}); install them with "
            f"'apt-get install -y dataset-fashion-mnist', or set {ENV_VAR} to a folder holding "
            f"{', '.join(name for pair in FILES for name in pair)}"
        )
    return folder


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 Fashion-MNIST images: the 60,000 training ones, then the 10,000 test ones.

    Args:
        root: folder of the four gzip IDX files; defaults to ``$ATTRKIT_FASHION_MNIST``,
            else :data:`DEFAULT_ROOT`.

    Returns:
        ``(X, y)``: ``X`` float32 ``[n, rows * cols]`` (``[70000, 784]``), pixels scaled
        from 0–255 to [0, 1], row-major; ``y`` int64 ``[n]``, class labels 0–9.

    Raises:
        FashionMNISTMissingError: a file is missing (an ``ImportError``: the message says
            how to install them).
        FashionMNISTFormatError: a file is not a uint8 IDX array, or images and labels disagree
            in count or the splits in image size.
    """
    folder = _root(root)
    images, labels = [], []
    for image_name, label_name in FILES:
        x, y = read_idx(folder / image_name, 3), read_idx(folder / label_name, 1)
        if x.shape[0] != y.shape[0]:
            raise FashionMNISTFormatError(f"{folder / image_name} holds {x.shape[0]} images, "
                                          f"but {folder / label_name} {y.shape[0]} labels")
        images.append(x.reshape(x.shape[0], -1))
        labels.append(y)
    if images[0].shape[1] != images[1].shape[1]:
        raise FashionMNISTFormatError(f"{folder}: training images have {images[0].shape[1]} pixels, "
                                      f"test images {images[1].shape[1]}")
    x = torch.from_numpy(np.concatenate(images)).to(torch.float32) / 255.0
    return x, torch.from_numpy(np.concatenate(labels).astype(np.int64))
