r"""Stochastic gradient descent with momentum, PyTorch's form.

Lecture section: "SGD with momentum/acceleration" (heavy ball, Nesterov). PyTorch writes
momentum with a buffer :math:`b_k` instead of the lecture's difference of iterates; for
``dampening=0`` the two are the same method (see :class:`SGD` and
:mod:`dnncourse.lecture_optim`, whose tests prove it).
"""

import torch


class SGD(torch.optim.Optimizer):
    r"""SGD, optionally with (Nesterov) momentum and L2 weight decay, as ``torch.optim.SGD``.

    With gradient :math:`g_k = \nabla f(\theta_k) + \lambda \theta_k`, momentum
    :math:`\mu`, dampening :math:`\tau` and learning rate :math:`\gamma`:

    .. math::

        b_k = \begin{cases} g_k & k = 0 \\ \mu b_{k-1} + (1 - \tau) g_k & k > 0 \end{cases},
        \qquad
        \theta_{k+1} = \theta_k - \gamma \begin{cases}
            g_k + \mu b_k & \text{nesterov} \\ b_k & \text{otherwise} \end{cases}

    and :math:`\theta_{k+1} = \theta_k - \gamma g_k` when :math:`\mu = 0`.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`\gamma` (default 1e-3).
        momentum: momentum factor :math:`\mu` (default 0).
        dampening: dampening :math:`\tau` for the momentum (default 0).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        nesterov: use Nesterov momentum (default False; needs ``momentum > 0`` and
            ``dampening == 0``).

    Example:
        >>> optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        The lecture's heavy ball is
        :math:`x_{k+1} = x_k - \alpha \nabla f(x_k) + \beta (x_k - x_{k-1})`. PyTorch keeps
        the buffer :math:`b_k = -(x_{k+1} - x_k)/\gamma` instead of the previous iterate; with
        ``dampening=0``, ``lr`` :math:`=\alpha` and ``momentum`` :math:`=\beta` the iterates
        are identical for a constant learning rate. Under a schedule they differ: the buffer is
        in gradient units, so a new ``lr`` also rescales the velocity PyTorch carries over,
        while the lecture's form carries the last displacement unchanged. With
        ``nesterov=True`` the parameter holds the lecture's look-ahead point
        :math:`x_k + \beta (x_k - x_{k-1})`, so one gradient per step suffices
        (:class:`dnncourse.lecture_optim.NesterovLookahead` states the mapping).
    """

    def __init__(
        self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])  # g + λθ (a new tensor)
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:  # first step: the buffer starts at the gradient
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                    grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.add_(grad, alpha=-lr)
        return loss

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
