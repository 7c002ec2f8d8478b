"""hw4: plausible wrong answers (one defect each) and correct answers written another way.

``WRONG[name] = (question, {answer grade_id: source})``; ``CORRECT[name] = {grade_id: source}``
(see hw1.py).
"""

BATCHNORM = """
class BatchNorm1d(torch.nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        dims = [0] if x.dim() == 2 else [0, 2]
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1)
        if TRAINING:
            n = COUNT
            mean = x.mean(dim=dims)
            var = x.var(dim=dims, unbiased=UNBIASED)
            UPDATE
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)
"""
UPDATE = """with torch.no_grad():
                eta = self.momentum
                self.running_mean.mul_(1 - eta).add_(eta * mean)
                self.running_var.mul_(1 - eta).add_(eta * RUNNING)"""


def batchnorm(
    training="self.training",
    count="x.numel() // x.shape[1]",
    unbiased="False",
    update=UPDATE,
    running="var * n / (n - 1)",
):
    source = BATCHNORM.replace("TRAINING", training).replace("COUNT", count)
    source = source.replace("UNBIASED", unbiased).replace("UPDATE", update)
    return {"batchnorm": source.replace("RUNNING", running)}


DROPOUT = """
def dropout(x, p, training=True, generator=None):
    if not training or p == 0:
        return x
    if p == 1:
        return torch.zeros_like(x)
    u = torch.rand(x.shape, generator=GENERATOR, device=DEVICE, dtype=x.dtype)
    return MASKED
"""


def dropout(generator="generator", device="x.device", masked="x * (u >= p).to(x.dtype) / (1 - p)"):
    source = DROPOUT.replace("GENERATOR", generator).replace("DEVICE", device)
    return {"dropout": source.replace("MASKED", masked)}


WHITENING = """
def standardize(X_train, X):
    return (X - X_train.mean(dim=0)) / X_train.std(dim=0, unbiased=UNBIASED)


def whiten(X_train, X, eps=1e-5):
    mean = X_train.mean(dim=0)
    _, S, VT = torch.linalg.svd(X_train - mean, full_matrices=False)
    lam = S**2 / DIVISOR
    return (X - CENTER) @ VT.T / torch.sqrt(lam + eps)
"""


def whitening(unbiased="False", divisor="(X_train.shape[0] - 1)", center="mean"):
    source = WHITENING.replace("UNBIASED", unbiased).replace("DIVISOR", divisor)
    return {"whitening": source.replace("CENTER", center)}


EARLY = """
class EarlyStopper:
    def __init__(self, patience=5, min_delta=0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best_loss, self.best_epoch, self.best_state = math.inf, None, None
        self.epoch, self.wait = -1, 0

    def step(self, val_loss, model=None):
        self.epoch += 1
        if IMPROVES:
            self.best_loss, self.best_epoch, self.wait = val_loss, self.epoch, 0
            if model is not None:
                self.best_state = STATE
            return False
        self.wait += 1
        return STOP
"""


def early(
    improves="val_loss < self.best_loss - self.min_delta",
    state="{k: v.detach().clone() for k, v in model.state_dict().items()}",
    stop="self.wait >= self.patience",
):
    source = EARLY.replace("IMPROVES", improves).replace("STATE", state)
    return {"early_stopping": source.replace("STOP", stop)}


WRONG = {
    "normalized with the unbiased variance": ("test_batchnorm_train", batchnorm(unbiased="True")),
    "3-D count without the positions": ("test_batchnorm_train", batchnorm(count="x.shape[0]")),
    "running statistics inside autograd": (
        "test_batchnorm_train",
        batchnorm(
            update="eta = self.momentum\n"
            "            self.running_mean = (1 - eta) * self.running_mean + eta * mean\n"
            "            self.running_var = (1 - eta) * self.running_var + eta * var * n / (n - 1)"
        ),
    ),
    "batch statistics in eval mode": ("test_batchnorm_eval", batchnorm(training="True")),
    "p as the keep probability": (
        "test_dropout",
        dropout(masked="x * (u < p).to(x.dtype) / p"),
    ),
    "the same mask every call": (
        "test_dropout",
        dropout(generator="generator or torch.Generator(device=x.device).manual_seed(0)"),
    ),
    "mask made on the CPU": ("test_dropout", dropout(device='"cpu"', generator="None")),
    "standardized with the unbiased std": ("test_standardize", whitening(unbiased="True")),
    "new data centered on itself": ("test_whiten", whitening(center="X.mean(dim=0)")),
    "whitening in increasing order": (
        "test_whiten",
        {
            "whitening": WHITENING.replace("UNBIASED", "False")
            .replace(
                "    _, S, VT = torch.linalg.svd(X_train - mean, full_matrices=False)\n"
                "    lam = S**2 / DIVISOR\n",
                "    lam, V = torch.linalg.eigh(torch.cov((X_train - mean).T))\n    VT = V.T\n",
            )
            .replace("CENTER", "mean")
        },
    ),
    "a tie counts as an improvement": (
        "test_early_stopping",
        early(improves="val_loss <= self.best_loss - self.min_delta"),
    ),
    "best_state is the live state_dict": (
        "test_early_stopping",
        early(state="model.state_dict()"),
    ),
}

CORRECT = {
    "var_mean, bernoulli, eigh": {
        "batchnorm": BATCHNORM.replace(
            "            mean = x.mean(dim=dims)\n"
            "            var = x.var(dim=dims, unbiased=UNBIASED)\n",
            "            var, mean = torch.var_mean(x, dim=dims, unbiased=False)\n",
        )
        .replace("TRAINING", "self.training")
        .replace("COUNT", "x.numel() / x.shape[1]")
        .replace("UPDATE", UPDATE)
        .replace("RUNNING", "var.detach() * n / (n - 1)"),
        "dropout": """
def dropout(x, p, training=True, generator=None):
    if not training:
        return x
    if p >= 1:
        return x * 0
    keep = torch.bernoulli(torch.full_like(x, 1 - p), generator=generator)
    return x * keep / (1 - p)
""",
        "whitening": """
def standardize(X_train, X):
    mu = X_train.mean(0, keepdim=True)
    return (X - mu) * torch.rsqrt(((X_train - mu) ** 2).mean(0, keepdim=True))


def whiten(X_train, X, eps=1e-5):
    mu = X_train.mean(0)
    lam, V = torch.linalg.eigh(torch.cov((X_train - mu).T))
    lam, V = lam.flip(0), V.flip(1)
    return (X - mu) @ V / (lam + eps).sqrt()
""",
        "early_stopping": "import copy\n"
        + EARLY.replace("IMPROVES", "val_loss < self.best_loss - self.min_delta")
        .replace("STATE", "copy.deepcopy(model.state_dict())")
        .replace("STOP", "self.wait >= self.patience"),
    },
    "sums by hand": {
        "batchnorm": BATCHNORM.replace(
            "            mean = x.mean(dim=dims)\n"
            "            var = x.var(dim=dims, unbiased=UNBIASED)\n",
            "            mean = x.sum(dim=dims) / n\n"
            "            var = ((x - mean.view(shape)) ** 2).sum(dim=dims) / n\n",
        )
        .replace("TRAINING", "self.training")
        .replace("COUNT", "x.numel() // x.shape[1]")
        .replace("UPDATE", UPDATE)
        .replace("RUNNING", "var * n / (n - 1)"),
        **dropout(masked="torch.where(u < 1 - p, x / (1 - p), torch.zeros_like(x))"),
    },
    "patience counter": {
        "early_stopping": """
class EarlyStopper:
    def __init__(self, patience=5, min_delta=0.0):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best_epoch = None
        self.best_state = None
        self.history = []

    def step(self, val_loss, model=None):
        self.history.append(val_loss)
        epoch = len(self.history) - 1
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch = val_loss, epoch
            if model is not None:
                self.best_state = {k: t.clone() for k, t in model.state_dict().items()}
        return epoch - (self.best_epoch if self.best_epoch is not None else -1) >= self.patience
""",
        **whitening(),
    },
}

# Correct forms that round differently (issue 19, item 6): running statistics as a lerp
# (an exponential moving average), rsqrt and addcmul for the normalization, the dropout scale
# folded into the mask (x * (mask / (1 - p)) rounds differently from x * mask / (1 - p): the
# distribution test allows for it), the mask made in place.
CORRECT["lerp, rsqrt, addcmul"] = {
    "batchnorm": BATCHNORM.replace(
        "        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)\n"
        "        return x_hat * self.weight.view(shape) + self.bias.view(shape)\n",
        "        x_hat = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)\n"
        "        return torch.addcmul(self.bias.view(shape), x_hat, self.weight.view(shape))\n",
    )
    .replace("TRAINING", "self.training")
    .replace("COUNT", "x.numel() // x.shape[1]")
    .replace("UNBIASED", "False")
    .replace(
        "UPDATE",
        "with torch.no_grad():\n"
        "                self.running_mean.lerp_(mean, self.momentum)\n"
        "                self.running_var.lerp_(var * (n / (n - 1)), self.momentum)",
    ),
    **dropout(masked="x * ((u >= p).to(x.dtype) * (1.0 / (1 - p)))"),
}
CORRECT["mask in place"] = {
    **dropout(masked="(u >= p).to(x.dtype).mul_(x).div_(1 - p)"),
}
CORRECT["scaled in float64"] = {  # 3 / 0.9 in float64 rounded to float32 is 1 ulp off
    **dropout(masked="(x.double() * (u >= p) / (1 - p)).to(x.dtype)"),
}
