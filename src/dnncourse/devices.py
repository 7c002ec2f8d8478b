"""Where tensors live: one rule for the whole course.

Every chapter, test and homework picks its device the same way: CUDA when a GPU is
present, else the CPU. Nothing in the package hard-codes ``.cuda()`` or ``"cpu"``.
"""

import torch


def default_device() -> torch.device:
    """Return ``cuda`` when a GPU is available, else ``cpu``.

    Example:
        >>> x = torch.zeros(3, device=default_device())
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
