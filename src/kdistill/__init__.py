"""kdistill: knowledge distillation, proved."""


def __getattr__(name: str):
    """``kdistill.Distiller`` without importing torch on ``import kdistill`` (the CLI starts fast)."""
    if name in ("Distiller", "DistillOutput"):
        from kdistill import distiller

        return getattr(distiller, name)
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


__all__ = ["DistillOutput", "Distiller"]
