r"""Adam and AdamW: RMSprop's scaling combined with momentum, with bias correction.

Lecture section: "Method 3: Adam" (and the variant ``torch.optim.AdamW``). References:
Kingma and Ba (2015); Reddi, Kale and Kumar (2018) for AMSGrad; Loshchilov and Hutter
(2019) for decoupled weight decay.
"""

import torch

from dnncourse.optim._checks import check_lr, check_nonnegative, new_step_counter


class Adam(torch.optim.Optimizer):
    r"""Adam, as ``torch.optim.Adam``.

    With :math:`g_k = \nabla f(\theta_{k-1}) + \lambda \theta_{k-1}` (step :math:`k \ge 1`),
    :math:`m_0 = v_0 = 0` and elementwise operations:

    .. math::

        m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \qquad
        v_k = \beta_2 v_{k-1} + (1 - \beta_2) g_k^2,

    .. math::

        \hat m_k = \frac{m_k}{1 - \beta_1^k}, \qquad
        \hat v_k = \frac{v_k}{1 - \beta_2^k}, \qquad
        \theta_k = \theta_{k-1} - \gamma \frac{\hat m_k}{\sqrt{\hat v_k} + \epsilon}.

    With ``amsgrad=True``, :math:`\hat v_k` uses :math:`\max_{j \le k} v_j` instead of
    :math:`v_k`, so the effective step size never grows.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`\gamma` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, decays of the two running averages
            (default (0.9, 0.999)).
        eps: :math:`\epsilon`, added to the root for stability (default 1e-8).
        weight_decay: L2 penalty :math:`\lambda` added to the gradient (default 0).
        amsgrad: use the running maximum of :math:`v_k` (default False).
        decoupled_weight_decay: shrink the weights directly, as :class:`AdamW` does
            (keyword only, default False).

    Example:
        >>> optimizer = Adam(model.parameters(), lr=1e-3)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()

    Note:
        The lecture's Adam is :math:`x_{k+1} = x_k - t_k\, m_k / \sqrt{s_k + \varepsilon}`:
        no bias correction, and :math:`\varepsilon` under the root. Since
        :math:`m_k` and :math:`s_k` start at zero, they underestimate the averages in
        early steps; for a constant gradient the lecture's step is
        :math:`(1 - \beta_1^k)/\sqrt{1 - \beta_2^k}` times PyTorch's (about 3.2 at
        :math:`k = 1` for the default betas, and still above 1 after a thousand steps).
        :class:`dnncourse.lecture_optim.LectureAdam` implements the lecture's form.
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        amsgrad=False,
        *,
        decoupled_weight_decay=False,
    ) -> None:
        check_lr(lr)
        check_nonnegative("epsilon", eps)
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_nonnegative("weight_decay", weight_decay)
        if not all(isinstance(b, float) for b in betas):
            raise ValueError(f"betas must be two floats, got {betas!r}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "decoupled_weight_decay": decoupled_weight_decay,
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
            lr, weight_decay = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = new_step_counter()
                    state["exp_avg"] = torch.zeros_like(p)  # m
                    state["exp_avg_sq"] = torch.zeros_like(p)  # v
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                k = state["step"].item()

                grad = p.grad
                if weight_decay != 0:
                    if group["decoupled_weight_decay"]:
                        p.mul_(1 - lr * weight_decay)  # AdamW: θ ← (1 - γλ) θ
                    else:
                        grad = grad.add(p, alpha=weight_decay)  # Adam: g ← g + λθ

                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)  # m = β₁ m + (1 - β₁) g
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    exp_avg_sq = state["max_exp_avg_sq"]

                bias_correction1 = 1 - beta1**k
                bias_correction2 = 1 - beta2**k
                # √v̂ + ε = √v / √(1 - β₂ᵏ) + ε, and m̂ = m / (1 - β₁ᵏ) goes into the step size
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        return loss

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("decoupled_weight_decay", False)


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay.

    Each step first shrinks the weights, :math:`\theta \leftarrow (1 - \gamma\lambda)\theta`,
    and then takes :class:`Adam`'s step with the plain gradient, so the decay is not
    rescaled by :math:`1/\sqrt{\hat v_k}` as an L2 penalty in Adam would be.

    Args:
        params: an iterable of tensors or of dicts (param groups).
        lr: learning rate :math:`\gamma` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: decoupled decay :math:`\lambda` (default 1e-2, unlike Adam's 0).
        amsgrad: use the running maximum of :math:`v_k` (default False).

    Example:
        >>> optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        >>> loss_fn(model(X), y).backward(); optimizer.step(); optimizer.zero_grad()
    """

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True
        )

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
