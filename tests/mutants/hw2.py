"""hw2: plausible wrong answers (one defect each) and correct answers written another way.

``WRONG[name] = (question, {answer grade_id: source})``; ``CORRECT[name] = {grade_id: source}``
(see hw1.py).
"""

MOMENTUM = """
class MomentumSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0.0, nesterov=False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                direction = p.grad
                if mu != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = INIT
                    else:
                        state["momentum_buffer"].mul_(mu).add_(p.grad, alpha=DAMP)
                    buf = state["momentum_buffer"]
                    direction = NESTEROV if group["nesterov"] else buf
                p.add_(direction, alpha=-LR)
        return loss
"""


def momentum(init="p.grad.clone()", damp="1", nesterov="p.grad.add(buf, alpha=mu)", lr=None):
    source = MOMENTUM.replace("INIT", init).replace("DAMP", damp).replace("NESTEROV", nesterov)
    return {"momentum_sgd": source.replace("LR", lr or 'group["lr"]')}


ADAGRAD = """
class Adagrad(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, eps=1e-10):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros_like(p)
                BODY
        return loss
"""
ADAGRAD_BODY = """state["sum"].addcmul_(p.grad, p.grad)
                p.addcdiv_(p.grad, state["sum"].sqrt().add_(group["eps"]), value=-group["lr"])"""

RMSPROP = """
class RMSprop(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha = group["alpha"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "square_avg" not in state:
                    state["square_avg"] = torch.zeros_like(p)
                v = state["square_avg"]
                v.mul_(ALPHA).addcmul_(p.grad, p.grad, value=ONE_MINUS)
                p.addcdiv_(p.grad, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return RETURN
"""

ADAM = """
class Adam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                if p.grad is None:
                    continue
                state["step"] += 1
                k = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                DENOM
                p.addcdiv_(m, denom, value=-group["lr"] / BIAS1)
        return loss
"""
ADAM_DENOM = 'denom = (v / (1 - beta2**k)).sqrt_().add_(group["eps"])'


def adam(denom=ADAM_DENOM, bias1="(1 - beta1**k)", skip_first=True):
    source = ADAM.replace("DENOM", denom).replace("BIAS1", bias1)
    if skip_first:  # the solution's order: no state for a parameter without gradient
        source = source.replace(
            "                state = self.state[p]\n",
            "                if p.grad is None:\n                    continue\n"
            "                state = self.state[p]\n",
        )
    return {"adam": source}


STAIRCASE = """
class StaircaseLR(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer, step_size, factor=10.0, last_epoch=-1):
        self.step_size = step_size
        self.factor = factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        BODY
"""

EPOCHS = """
def train_epochs(
    model, loss_fn, optimizer, X, y, num_epochs, batch_size, generator, scheduler=None
):
    n = len(X)
    epoch_losses = []
    PERM_ONCE
    for _ in range(num_epochs):
        PERM_EACH
        total = 0.0
        for start in range(0, n, batch_size):
            batch = perm[start : start + batch_size]
            batch_loss = loss_fn(model(X[batch]), y[batch])
            optimizer.zero_grad()
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * WEIGHT
            PER_BATCH
        if scheduler is not None and PER_EPOCH:
            scheduler.step()
        epoch_losses.append(total / DIVISOR)
    return epoch_losses
"""
PERM = "perm = torch.randperm(n, generator=generator).to(X.device)"


def epochs(once=False, weight="len(batch)", divisor="n", per_batch=False):
    source = EPOCHS.replace("PERM_ONCE", PERM if once else "pass")
    source = source.replace("PERM_EACH", "pass" if once else PERM)
    source = source.replace("WEIGHT", weight).replace("DIVISOR", divisor)
    source = source.replace(
        "PER_BATCH",
        "if scheduler is not None:\n                scheduler.step()" if per_batch else "pass",
    )
    return {"train_epochs": source.replace("PER_EPOCH", "False" if per_batch else "True")}


WRONG = {
    "momentum buffer aliases the gradient": ("test_heavy_ball", momentum(init="p.grad")),
    "dampened momentum": ("test_heavy_ball", momentum(damp="1 - mu")),
    "the default lr for every group": ("test_heavy_ball", momentum(lr='self.defaults["lr"]')),
    "Nesterov ignored": ("test_nesterov", momentum(nesterov="buf")),
    "Adagrad eps under the root": (
        "test_adagrad",
        {
            "adagrad": ADAGRAD.replace(
                "BODY",
                ADAGRAD_BODY.replace(
                    'state["sum"].sqrt().add_(group["eps"])',
                    'state["sum"].add(group["eps"]).sqrt()',
                ),
            )
        },
    ),
    "RMSprop alpha swapped": (
        "test_rmsprop",
        {
            "rmsprop": RMSPROP.replace("ALPHA", "1 - alpha")
            .replace("ONE_MINUS", "alpha")
            .replace("RETURN", "loss")
        },
    ),
    "RMSprop does not return the closure's loss": (
        "test_rmsprop",
        {
            "rmsprop": RMSPROP.replace("ALPHA", "alpha")
            .replace("ONE_MINUS", "1 - alpha")
            .replace("RETURN", "None")
        },
    ),
    "Adam without bias correction": (
        "test_adam",
        adam(denom='denom = v.sqrt().add(group["eps"])', bias1="1"),
    ),
    "Adam state for a parameter without gradient": ("test_adam", adam(skip_first=False)),
    "staircase off by one": (
        "test_staircase",
        {
            "staircase": STAIRCASE.replace(
                "BODY",
                "drops = (self.last_epoch + 1) // self.step_size\n"
                "        return [lr / self.factor**drops for lr in self.base_lrs]",
            )
        },
    ),
    "one permutation for all epochs": ("test_train_epochs", epochs(once=True)),
    "mean of the batch means": (
        "test_train_epochs",
        epochs(weight="1", divisor="-(-n // batch_size)"),
    ),
}

CORRECT = {
    "PyTorch's formulas": {
        **momentum(init="torch.clone(p.grad).detach()", nesterov="p.grad + mu * buf"),
        "adagrad": ADAGRAD.replace(
            "BODY",
            'state["sum"].add_(p.grad * p.grad)\n'
            '                std = state["sum"].sqrt().add_(group["eps"])\n'
            '                p.sub_(group["lr"] * p.grad / std)',
        ),
        "rmsprop": RMSPROP.replace("ALPHA", "alpha")
        .replace("ONE_MINUS", "1 - alpha")
        .replace("RETURN", "loss"),
        **adam(
            denom='denom = (v.sqrt() / math.sqrt(1 - beta2**k)).add_(group["eps"])',
            bias1="(1 - beta1**k)",
        ),
        "staircase": STAIRCASE.replace(
            "BODY",
            "if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:\n"
            '            return [group["lr"] for group in self.optimizer.param_groups]\n'
            '        return [group["lr"] / self.factor for group in self.optimizer.param_groups]',
        ),
        "train_epochs": """
def train_epochs(model, loss_fn, optimizer, X, y, num_epochs, batch_size, generator,
                 scheduler=None):
    history = []
    for _ in range(num_epochs):
        order = torch.randperm(X.shape[0], generator=generator).to(X.device)
        weighted = 0.0
        for batch in order.split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
            weighted += loss.item() * batch.numel()
        if scheduler:
            scheduler.step()
        history.append(weighted / X.shape[0])
    return history
""",
    },
    "explicit arithmetic": {
        "momentum_sgd": MOMENTUM.replace("INIT", "p.grad.detach().clone()")
        .replace("DAMP", "1")
        .replace("NESTEROV", "p.grad + buf * mu")
        .replace("p.add_(direction, alpha=-LR)", 'p -= group["lr"] * direction'),
        "adam": """
class Adam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    g = p.grad
                    st = self.state[p]
                    if not st:
                        st["step"] = 0
                        st["exp_avg"] = torch.zeros_like(p)
                        st["exp_avg_sq"] = torch.zeros_like(p)
                    st["step"] += 1
                    st["exp_avg"] = b1 * st["exp_avg"] + (1 - b1) * g
                    st["exp_avg_sq"] = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
                    m_hat = st["exp_avg"] / (1 - b1 ** st["step"])
                    v_hat = st["exp_avg_sq"] / (1 - b2 ** st["step"])
                    p -= group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        return loss
""",
    },
    "state from the gradient": {
        "rmsprop": RMSPROP.replace("torch.zeros_like(p)", "torch.zeros_like(p.grad)")
        .replace("ALPHA", "alpha")
        .replace("ONE_MINUS", "1 - alpha")
        .replace("RETURN", "loss"),
        "staircase": STAIRCASE.replace(
            "BODY",
            "k = math.floor(self.last_epoch / self.step_size)\n"
            "        return [base * (1.0 / self.factor) ** k for base in self.base_lrs]",
        ),
    },
}

# Correct forms that round differently (issue 19, item 6): the moving averages as lerp
# (PyTorch's own Adam does this), addcmul/addcdiv against separate products and quotients,
# state replaced out of place instead of updated in place, _foreach kernels.
CORRECT["lerp and out of place"] = {
    **momentum(init="torch.clone(p.grad).detach()", nesterov="torch.add(p.grad, buf, alpha=mu)"),
    "adagrad": ADAGRAD.replace(
        "BODY",
        'state["sum"] = state["sum"] + p.grad**2\n'
        '                p.sub_(p.grad / (state["sum"].sqrt() + group["eps"]) * group["lr"])',
    ),
    "rmsprop": RMSPROP.replace(
        "v.mul_(ALPHA).addcmul_(p.grad, p.grad, value=ONE_MINUS)",
        "v.lerp_(p.grad * p.grad, 1 - alpha)",
    ).replace("RETURN", "loss"),
    "adam": """
class Adam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
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
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p))
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                k = state["step"]
                state["exp_avg"].lerp_(p.grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad.conj(), value=1 - beta2)
                step_size = group["lr"] / (1 - beta1**k)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**k)).add_(group["eps"])
                p.addcdiv_(state["exp_avg"], denom, value=-step_size)
        return loss
""",
}
CORRECT["foreach kernels"] = {
    "adagrad": ADAGRAD.replace(
        "BODY",
        'torch._foreach_addcmul_([state["sum"]], [p.grad], [p.grad])\n'
        '                root = torch._foreach_sqrt([state["sum"]])\n'
        '                std = torch._foreach_add(root, group["eps"])\n'
        '                torch._foreach_addcdiv_([p], [p.grad], std, value=-group["lr"])',
    ),
}
