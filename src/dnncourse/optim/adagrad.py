r"""Adagrad: divide each coordinate of the gradient by its accumulated magnitude.

Lecture section: "Method 1: Adagrad". Reference: Duchi, Hazan and Singer (2011).
"""

import torch

from dnncourse.optim._checks import check_lr, check_nonnegative, new_step_counter


class Adagrad(torch.optim.Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    With :math:`g_k = \nabla f(\theta_{k-1}) + \lambda \theta_{k-1}` (step :math:`k \ge 1`),
    the accumulator :math:`s_0 = \texttt{initial\_accumulator\_value}` and elementwise
    operations:

    .. math::

        s_k = s_{k-1} + g_k^2, \qquad
        \gamma_k = \frac{\gamma}{1 + (k - 1)\,\eta}, \qquad
        \theta_k = \theta_{k-1} - \gamma_k \frac{g_k}{\sqrt{s_k} + \epsilon}.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`\gamma` (default 1e-2).
        lr_decay: :math:`\eta` in the 1/k decay of the learning rate (default 0).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        initial_accumulator_value: the start :math:`s_0` of the sum of squares (default 0).
        eps: :math:`\epsilon`, added to the root for stability (default 1e-10).

    Example:
        >>> optimizer = Adagrad(model.parameters(), lr=0.1)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        The lecture puts :math:`\epsilon` under the root, :math:`g_k / \sqrt{s_k + \epsilon}`;
        PyTorch adds it after, :math:`g_k / (\sqrt{s_k} + \epsilon)`. Both only guard against
        a division by zero. PyTorch fills ``sum`` with the constructor's
        ``initial_accumulator_value`` for every param group; here a group's own value wins
        (the two agree whenever no group overrides it).
    """

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0,
        weight_decay=0,
        initial_accumulator_value=0,
        eps=1e-10,
    ) -> None:
        check_lr(lr)
        check_nonnegative("lr_decay", lr_decay)
        check_nonnegative("weight_decay", weight_decay)
        check_nonnegative("initial_accumulator_value", initial_accumulator_value)
        check_nonnegative("epsilon", eps)
        defaults = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
        }
        super().__init__(params, defaults)
        # Adagrad, unlike the others, creates its state up front (PyTorch does the same).
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, group)

    def _init_state(self, p, group):
        state = self.state[p]
        state["step"] = new_step_counter()
        state["sum"] = torch.full_like(p, group["initial_accumulator_value"])
        return state

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
                if len(state) == 0:  # a group added after construction
                    state = self._init_state(p, group)
                state["step"] += 1
                k = state["step"].item()

                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                clr = group["lr"] / (1 + (k - 1) * group["lr_decay"])

                state["sum"].addcmul_(grad, grad, value=1)  # s += g²
                std = state["sum"].sqrt().add_(group["eps"])  # √s + ε
                p.addcdiv_(grad, std, value=-clr)  # θ -= γ_k g / (√s + ε)
        return loss
