"""Built-in model families, bundled pretrained teachers, and safe weight loading."""

from kdistill.models.builders import CNN, MLP, build_model, count_parameters, load_weights

__all__ = ["CNN", "MLP", "build_model", "count_parameters", "load_weights"]
