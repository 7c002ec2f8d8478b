r"""RMSprop: Adagrad with an exponentially decaying history of squared gradients.

Lecture section: "Method 2: RMSprop". Reference: Tieleman and Hinton (2012); the
centered variant and momentum follow Graves (2013) as PyTorch does.
"""

import torch

from dnncourse.optim._checks import check_lr, check_nonnegative, new_step_counter


class RMSprop(torch.optim.Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    With :math:`g_k = \nabla f(\theta_{k-1}) + \lambda \theta_{k-1}`, decay :math:`\alpha`
    and elementwise operations:

    .. math::

        v_k = \alpha v_{k-1} + (1 - \alpha) g_k^2, \qquad
        \bar g_k = \alpha \bar g_{k-1} + (1 - \alpha) g_k \;\;(\text{centered only}),

    .. math::

        d_k = \sqrt{v_k} + \epsilon \;\;\text{or, centered,}\;\;
        d_k = \sqrt{v_k - \bar g_k^2} + \epsilon,

    .. math::

        \theta_k = \theta_{k-1} - \gamma \frac{g_k}{d_k}
        \quad\text{or, with momentum } \mu,\quad
        b_k = \mu b_{k-1} + \frac{g_k}{d_k},\;\; \theta_k = \theta_{k-1} - \gamma b_k .

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`\gamma` (default 1e-2).
        alpha: decay :math:`\alpha` of the running average (default 0.99; the lecture's
            :math:`\beta`).
        eps: :math:`\epsilon`, added to the root for stability (default 1e-8).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        momentum: momentum :math:`\mu` on the scaled step (default 0).
        centered: divide by an estimate of the variance instead of the second moment
            (default False).

    Example:
        >>> optimizer = RMSprop(model.parameters(), lr=1e-3, alpha=0.9)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        The lecture writes :math:`x_{k+1} = x_k - t_k g_k / \sqrt{s_k + \epsilon}` with
        :math:`s_k = \beta s_{k-1} + (1 - \beta) g_k^2`: PyTorch's ``alpha`` is the lecture's
        :math:`\beta`, and :math:`\epsilon` sits outside the root here. Neither applies a
        bias correction, so the first steps are :math:`1/\sqrt{1-\alpha}` times longer
        than the later ones for a constant gradient.
    """

    def __init__(
        self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False
    ) -> None:
        check_lr(lr)
        check_nonnegative("epsilon", eps)
        check_nonnegative("momentum", momentum)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("alpha", alpha)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
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
            alpha, momentum = group["alpha"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = new_step_counter()
                    state["square_avg"] = torch.zeros_like(p)
                    if momentum > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
                state["step"] += 1

                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])

                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)  # v_k
                if group["centered"]:
                    grad_avg = state["grad_avg"]
                    grad_avg.lerp_(grad, 1 - alpha)  # ḡ_k = α ḡ + (1 - α) g
                    avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
                else:
                    avg = square_avg.sqrt()
                avg = avg.add_(group["eps"])  # d_k

                if momentum > 0:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(grad, avg)
                    p.add_(buf, alpha=-group["lr"])
                else:
                    p.addcdiv_(grad, avg, value=-group["lr"])
        return loss
