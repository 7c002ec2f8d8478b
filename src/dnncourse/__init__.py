"""dnncourse: Training deep networks, basic methods and tricks.

A reference implementation of the methods in the lecture "Training DNNs: Basic
Methods and Tricks" (Ju Sun), with PyTorch's API. One small module per topic:

- :mod:`dnncourse.polynomial`: the running example, a cubic fitted to sin(x).
- :mod:`dnncourse.gradcheck`: central finite differences to check gradients.
- :mod:`dnncourse.datasets`: the data every chapter uses (generated or bundled).
- :mod:`dnncourse.training`: the generic training loop :func:`dnncourse.train`.
"""

from dnncourse.devices import default_device
from dnncourse.training import Callback, History, evaluate, train

__all__ = ["Callback", "History", "default_device", "evaluate", "train"]
__version__ = "0.1.0"
