"""dnncourse: Training deep networks, basic methods and tricks.

A reference implementation of the methods in the lecture "Training DNNs: Basic
Methods and Tricks" (Ju Sun), with PyTorch's API. One small module per topic, in the
lecture's order:

- :mod:`dnncourse.polynomial`: the running example, a cubic fitted to sin(x).
- :mod:`dnncourse.gradcheck`: central finite differences to check gradients.
- :mod:`dnncourse.datasets`: the data every chapter uses (generated or bundled).
- :mod:`dnncourse.activations`: activations written from exp, stable at any input, and Maxout.
- :mod:`dnncourse.losses`: losses with torch.nn.functional's names and reductions.
- :mod:`dnncourse.models`: the one model builder, :func:`dnncourse.models.mlp`.
- :mod:`dnncourse.training`: the generic training loop :func:`dnncourse.train` and
  :func:`dnncourse.fit_classifier` (an optimizer factory, an optional scheduler factory and a
  generator in, a score out), :func:`dnncourse.fit_mlp` (a fresh MLP from a seed, fitted).
- :mod:`dnncourse.optim`: SGD, Adagrad, RMSprop, Adam, AdamW as torch.optim.Optimizer subclasses.
- :mod:`dnncourse.lecture_optim`: the lecture's heavy ball, Nesterov and Adam forms.
- :mod:`dnncourse.schedules`: 1/t, exponential, staircase and cosine (warmup) decay.
- :mod:`dnncourse.problems`: test problems (elongated quadratic, least squares).
- :mod:`dnncourse.init`: weight initialization with torch.nn.init's API.
- :mod:`dnncourse.diagnostics`: per-layer activation and gradient statistics, gradient norms.
- :mod:`dnncourse.callbacks`: early stopping for :func:`dnncourse.train`.
- :mod:`dnncourse.preprocessing`: standardization, PCA rotation and whitening.
- :mod:`dnncourse.nn`: normalization layers (batch, layer, group, instance, weight) and dropout.
- :mod:`dnncourse.regularizers`: L2 (weight decay), L1, the Jacobian penalty, max-norm.
- :mod:`dnncourse.augment`: image augmentation with torch operations.
- :mod:`dnncourse.hpsearch`: grid and random search.
- :mod:`dnncourse.mnist`: MNIST IDX files from a local path.
- :mod:`dnncourse.plotting`: figures several chapters draw (contours, the norm zoo, images).
- :mod:`dnncourse.homework`, :mod:`dnncourse.grading`, :mod:`dnncourse.cli`: the homework
  and the instructor's side (``dnncourse release``, ``dnncourse grade``).
"""

import importlib

# Loaded on first use (PEP 562), not when ``dnncourse`` is imported: the grader's processes
# (the Dask workers, the grading processes, ``dnncourse grade`` itself) need no PyTorch, which
# takes about 2 s of CPU to import in each of them.
_EXPORTS = {
    "default_device": "dnncourse.devices",
    **dict.fromkeys(
        ["Callback", "History", "evaluate", "fit_classifier", "fit_mlp", "train"],
        "dnncourse.training",
    ),
}


def __getattr__(name: str):
    """``dnncourse.train`` and the others of ``__all__``, and any submodule, on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":  # a submodule that failed to import
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "Callback",
    "History",
    "default_device",
    "evaluate",
    "fit_classifier",
    "fit_mlp",
    "train",
]
__version__ = "0.1.0"
