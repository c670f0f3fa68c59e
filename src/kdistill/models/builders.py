"""Small classifier families (MLP, CNN) and the bundled pretrained MNIST CNN."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from kdistill.errors import ModelError


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int,
                 dropout: float = 0.0, input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """[Conv3x3 -> ReLU -> MaxPool2] per channel width, then a one-hidden-layer head.

    With channels [32, 64] and hidden 128 its parameter names match the ccexam MNIST CNN, so that
    checkpoint loads into it directly.
    """

    def __init__(self, input_shape: tuple[int, ...], channels: list[int], hidden: int,
                 num_classes: int, dropout: float = 0.0, normalize: tuple[float, float] | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ModelError(f"cnn needs image inputs (C, H, W), got input shape {input_shape}")
        c, h, w = input_shape
        if normalize:
            self.register_buffer("norm", torch.tensor(normalize), persistent=False)
        else:
            self.norm = None
        feats: list[nn.Module] = []
        for out in channels:
            feats += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        if h == 0 or w == 0:
            raise ModelError(f"cnn: {len(channels)} pooling stages shrink a {input_shape} input to nothing")
        self.features = nn.Sequential(*feats)
        head: list[nn.Module] = [nn.Linear(c * h * w, hidden), nn.ReLU()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        return self.classifier(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a state dict from safetensors, or from a torch file with ``weights_only=True``
    (pickled code in a weights file is refused, never run)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"weights file {path} is a folder: give the .safetensors (or torch) file in it")
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types; nothing is unpickled
            raise ModelError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())[:200]}): "
                             "it is damaged, truncated or another format; re-save the weights with "
                             "safetensors.torch.save_file") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(
                f"{path} is not a plain weights file (refused by torch.load(weights_only=True): "
                f"{str(exc).splitlines()[0]}); save weights with safetensors or torch.save(state_dict)"
            ) from None
        if isinstance(state, dict) and "student" in state and isinstance(state["student"], dict):
            state = state["student"]  # a kdistill checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} does not hold a state dict (a mapping of names to tensors): save "
                         "model.state_dict() with safetensors or torch.save")
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise ModelError(f"weights in {path} do not fit the model: {str(exc).splitlines()[0]} "
                         f"{' '.join(str(exc).split())[:400]}") from None
    return model


def build_model(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A model from a config spec (``MLPSpec``, ``CNNSpec``, ``PretrainedSpec``)."""
    if spec.arch == "mlp":
        model = MLP(math.prod(input_shape), spec.hidden, num_classes, spec.dropout, spec.input_dropout)
    elif spec.arch == "cnn":
        model = CNN(input_shape, spec.channels, spec.hidden, num_classes, spec.dropout)
    elif spec.arch == "pretrained":
        model = pretrained(spec.name, input_shape, num_classes)
    else:  # pragma: no cover - the config's discriminated union rules this out
        raise ModelError(f"unknown architecture {spec.arch!r}")
    if spec.weights is not None:
        load_weights(model, spec.weights)
    return model


def pretrained(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Bundled pretrained teachers, loaded from their offline packages."""
    from kdistill.assets import bundled_path

    if name == "ccexam-mnist":
        if tuple(input_shape) != (1, 28, 28) or num_classes != 10:
            raise ModelError(f"ccexam-mnist takes 1x28x28 digits and predicts 10 classes; the data "
                             f"has inputs {tuple(input_shape)} and {num_classes} classes")
        # The package trained on inputs normalised with MNIST's mean and std; do the same here.
        model = CNN((1, 28, 28), [32, 64], 128, 10, normalize=(0.1307, 0.3081))
        return load_weights(model, bundled_path("ccexam", "weights/mnist.pth", "ccexam==1.0.0", needed_by="the pretrained MNIST teacher"))
    raise ModelError(f"unknown pretrained model {name!r}")
