r"""The lecture's own forms of momentum and Adam, side by side with PyTorch's.

Lecture section: "Beyond the vanilla SGD" (heavy ball, Nesterov's accelerated gradient,
Adam). The lecture writes momentum with the previous iterate :math:`x_{k-1}`, evaluates
Nesterov's gradient at a look-ahead point, and states Adam without bias correction and
with :math:`\varepsilon` under the root. PyTorch (and :mod:`dnncourse.optim`) writes the
same ideas differently. These three optimizers follow the lecture literally, so the tests
can show where the two forms are one method and where they are not:

- :class:`HeavyBall` equals ``SGD(lr=alpha, momentum=beta, dampening=0)`` exactly (for a
  constant learning rate);
- :class:`NesterovLookahead` equals ``SGD(nesterov=True)`` after a change of variables
  (PyTorch's parameter is the lecture's look-ahead point);
- :class:`LectureAdam` is *not* ``Adam``: without bias correction its early steps are
  longer, by :math:`(1 - \beta_1^k) / \sqrt{1 - \beta_2^k}` for a constant gradient.

References: Polyak (1964); Nesterov (1983); Sutskever et al. (2013); Kingma and Ba (2015).
"""

import torch

from dnncourse.optim._checks import check_lr, check_nonnegative, new_step_counter

__all__ = ["HeavyBall", "LectureAdam", "NesterovLookahead"]


class HeavyBall(torch.optim.Optimizer):
    r"""Polyak's heavy-ball method in the lecture's form.

    .. math::

        x_{k+1} = x_k - \alpha \nabla f(x_k) + \beta (x_k - x_{k-1}), \qquad x_{-1} = x_0 .

    The state holds the previous iterate, ``state["previous"]`` :math:`= x_{k-1}`.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: step size :math:`\alpha` (default 1e-3).
        momentum: momentum :math:`\beta` (default 0.9).

    Example:
        >>> optimizer = HeavyBall(model.parameters(), lr=0.1, momentum=0.9)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        ``torch.optim.SGD(lr=alpha, momentum=beta)`` (``dampening=0``) keeps the buffer
        :math:`b_k = \beta b_{k-1} + \nabla f(x_k)` and steps :math:`x_{k+1} = x_k - \alpha
        b_k`. Since :math:`x_k - x_{k-1} = -\alpha b_{k-1}`, this is the same iteration. When
        the step size changes from :math:`\alpha_{k-1}` to :math:`\alpha_k`, PyTorch's
        momentum term becomes :math:`\beta\,(\alpha_k / \alpha_{k-1})\,(x_k - x_{k-1})`:
        the lecture's form with :math:`\beta_k = \beta \alpha_k / \alpha_{k-1}`.
    """

    def __init__(self, params, lr=1e-3, momentum=0.9) -> None:
        check_lr(lr)
        check_nonnegative("momentum", momentum)
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "previous" not in state:  # x_{-1} = x_0
                    state["previous"] = p.detach().clone()
                previous = state["previous"]  # x_{k-1}
                displacement = p - previous  # x_k - x_{k-1}
                previous.copy_(p)
                p.add_(p.grad, alpha=-group["lr"]).add_(displacement, alpha=group["momentum"])
        return loss


class NesterovLookahead(torch.optim.Optimizer):
    r"""Nesterov's accelerated gradient in the lecture's look-ahead form.

    .. math::

        y_k = x_k + \beta (x_k - x_{k-1}), \qquad
        x_{k+1} = y_k - \alpha \nabla f(y_k), \qquad x_{-1} = x_0 .

    The parameters hold :math:`x_k`. The gradient is needed at :math:`y_k`, not at
    :math:`x_k`, so ``step`` requires a closure: it moves the parameters to :math:`y_k`,
    calls the closure (which must zero the gradients, compute the loss and call
    ``backward``), and returns the loss at :math:`y_k`.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: step size :math:`\alpha` (default 1e-3).
        momentum: momentum :math:`\beta` (default 0.9).

    Example:
        >>> optimizer = NesterovLookahead(model.parameters(), lr=0.1, momentum=0.9)
        >>> optimizer.step(closure)  # closure: zero_grad, loss = loss_fn(model(X), y), backward

    Note:
        ``torch.optim.SGD(lr=alpha, momentum=beta, nesterov=True)`` needs one ordinary
        gradient per step because its parameter *is* the look-ahead point: started from the
        same :math:`x_0`, its iterates are :math:`p_k = y_k`, its buffer is
        :math:`b_k = (x_k - x_{k+1}) / \alpha`, and the lecture's iterate is recovered as
        :math:`x_{k+1} = p_k - \alpha \nabla f(p_k)`.
    """

    def __init__(self, params, lr=1e-3, momentum=0.9) -> None:
        check_lr(lr)
        check_nonnegative("momentum", momentum)
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        """Move to the look-ahead point, evaluate ``closure`` there, take the gradient step."""
        if closure is None:
            raise ValueError(
                "NesterovLookahead.step needs a closure that zeroes the gradients, computes "
                "the loss and calls backward(): the gradient is taken at the look-ahead point"
            )
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "previous" not in state:  # x_{-1} = x_0
                    state["previous"] = p.detach().clone()
                previous = state["previous"]  # x_{k-1}
                current = p.detach().clone()  # x_k
                p.add_(p - previous, alpha=group["momentum"])  # p = y_k
                previous.copy_(current)  # becomes x_{k-1} of the next step
        with torch.enable_grad():
            loss = closure()  # gradients at y_k
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])  # x_{k+1} = y_k - α ∇f(y_k)
        return loss


class LectureAdam(torch.optim.Optimizer):
    r"""Adam as the lecture states it: no bias correction, :math:`\varepsilon` under the root.

    .. math::

        m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \qquad
        s_k = \beta_2 s_{k-1} + (1 - \beta_2) g_k^2, \qquad
        x_{k+1} = x_k - t \frac{m_k}{\sqrt{s_k + \varepsilon}},

    with :math:`m_0 = s_0 = 0`. The state uses PyTorch's names ``exp_avg`` (:math:`m`),
    ``exp_avg_sq`` (:math:`s`) and ``step``.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`t` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\varepsilon`, under the root (default 1e-8).

    Example:
        >>> optimizer = LectureAdam(model.parameters(), lr=1e-3)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        ``torch.optim.Adam`` divides :math:`m_k` by :math:`1 - \beta_1^k` and :math:`s_k`
        by :math:`1 - \beta_2^k` and adds :math:`\varepsilon` after the root. For a constant
        gradient the lecture's step is :math:`(1 - \beta_1^k)/\sqrt{1 - \beta_2^k}` times
        PyTorch's (ignoring :math:`\varepsilon`): :math:`\approx 3.16` at :math:`k=1`,
        up to :math:`\approx 6.6` at :math:`k = 12`, :math:`\approx 1.26` at
        :math:`k = 1000` and :math:`\to 1` as :math:`k \to \infty` for the default betas.
        Both forms stay put at a stationary point once the averages have decayed.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8) -> None:
        check_lr(lr)
        check_nonnegative("epsilon", eps)
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        """Take one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = new_step_counter()
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, s = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                s.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.addcdiv_(m, s.add(group["eps"]).sqrt_(), value=-group["lr"])
        return loss
