r"""Optimizers from scratch with PyTorch's API: SGD, Adagrad, RMSprop, Adam and AdamW.

Lecture section: "Training algorithms / Which method" (SGD with momentum, Adagrad,
RMSprop, Adam). Each class subclasses ``torch.optim.Optimizer``, takes the same
arguments with the same defaults as ``torch.optim.<Name>``, keeps its per-parameter
state under PyTorch's names (``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``step``) and performs the same
arithmetic, so ``state_dict()`` from one loads into the other and the two produce the
same iterates. What is left out: ``maximize``, ``foreach``, ``fused``, ``capturable``,
``differentiable`` and sparse gradients (PyTorch's speed and special-purpose paths).

One file per family: :mod:`~dnncourse.optim.sgd`, :mod:`~dnncourse.optim.adagrad`,
:mod:`~dnncourse.optim.rmsprop`, :mod:`~dnncourse.optim.adam` (Adam and AdamW). The
lecture's own forms (heavy ball, Nesterov's look-ahead, Adam without bias correction)
are in :mod:`dnncourse.lecture_optim`.

References: Polyak (1964); Nesterov (1983); Sutskever et al. (2013); Duchi et al. (2011);
Tieleman and Hinton (2012); Kingma and Ba (2015); Loshchilov and Hutter (2019).
"""

from dnncourse.optim.adagrad import Adagrad
from dnncourse.optim.adam import Adam, AdamW
from dnncourse.optim.rmsprop import RMSprop
from dnncourse.optim.sgd import SGD

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]
