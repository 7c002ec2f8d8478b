"""Small helpers shared by the optimizers: hyperparameter checks and the step counter."""

import torch


def check_lr(lr) -> None:
    """Raise ``ValueError`` for a negative learning rate or a tensor one with several entries."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_nonnegative(name: str, value) -> None:
    """Raise ``ValueError`` unless ``0 <= value`` (so NaN is rejected too)."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name} value: {value}")


def new_step_counter() -> torch.Tensor:
    """A zero step counter as PyTorch keeps it: a 0-dim CPU tensor.

    Its dtype is float64 when the default dtype is float64, else float32 (PyTorch's rule), so
    a ``state_dict`` moves between these optimizers and ``torch.optim`` unchanged.
    """
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)
