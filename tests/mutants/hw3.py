"""hw3: plausible wrong answers (one defect each) and correct answers written another way.

``WRONG[name] = (question, {answer grade_id: source})``; ``CORRECT[name] = {grade_id: source}``
(see hw1.py).
"""

ACTIVATIONS = """
def leaky_relu(x, negative_slope=0.01):
    return LEAKY


def elu(x, alpha=1.0):
    return ELU
"""


def activations(leaky="torch.where(x > 0, x, negative_slope * x)", elu=None):
    elu = elu or "torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0.0)))"
    return {"activations": ACTIVATIONS.replace("LEAKY", leaky).replace("ELU", elu)}


CROSS_ENTROPY = """
def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(reduction)
    m = logits.shape[1]
    LOG_P
    one_hot = torch.zeros_like(log_p).scatter_(1, target.unsqueeze(1), 1.0)
    q = SMOOTHED
    loss = -(q * log_p).sum(dim=1)
    if reduction == "mean":
        return MEAN
    if reduction == "sum":
        return loss.sum()
    return loss
"""
STABLE = (
    "shifted = logits - logits.amax(dim=1, keepdim=True)\n"
    "    log_p = shifted - torch.log(torch.exp(shifted).sum(dim=1, keepdim=True))"
)


def cross_entropy(log_p=STABLE, smoothed=None, mean="loss.mean()", check=True):
    smoothed = smoothed or "(1 - label_smoothing) * one_hot + label_smoothing / m"
    source = CROSS_ENTROPY.replace("LOG_P", log_p).replace("SMOOTHED", smoothed)
    source = source.replace("MEAN", mean)
    if not check:
        source = source.replace("raise ValueError(reduction)", "reduction = 'mean'")
    return {"cross_entropy": source}


INIT = """
def fan_in_and_fan_out(w):
    if w.dim() < 2:
        raise ValueError("need at least 2 dimensions")
    kernel = KERNEL
    return w.shape[1] * kernel, w.shape[0] * kernel


def xavier_uniform_(w, gain=1.0, generator=None):
    fan_in, fan_out = fan_in_and_fan_out(w)
    bound = XAVIER_BOUND
    with torch.no_grad():
        return XAVIER_DRAW


def kaiming_normal_(w, mode="fan_in", generator=None):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(mode)
    fan_in, fan_out = fan_in_and_fan_out(w)
    std = KAIMING_STD
    with torch.no_grad():
        return w.normal_(0.0, std, generator=GENERATOR)
"""


def init(
    kernel="math.prod(w.shape[2:])",
    bound="gain * math.sqrt(6.0 / (fan_in + fan_out))",
    draw="w.uniform_(-bound, bound, generator=generator)",
    std='math.sqrt(2.0 / (fan_in if mode == "fan_in" else fan_out))',
    generator="generator",
):
    source = INIT.replace("KERNEL", kernel).replace("XAVIER_BOUND", bound)
    source = source.replace("XAVIER_DRAW", draw).replace("KAIMING_STD", std)
    return {"init": source.replace("GENERATOR", generator)}


WRONG = {
    "softmax without the shift": (
        "test_softmax",
        {
            "softmax": "def softmax(z, dim=-1):\n    e = torch.exp(z)\n"
            "    return e / e.sum(dim, keepdim=True)\n"
        },
    ),
    "softmax shifted by the global max": (
        "test_softmax",
        {
            "softmax": "def softmax(z, dim=-1):\n    e = torch.exp(z - z.max())\n"
            "    return e / e.sum(dim, keepdim=True)\n"
        },
    ),
    "elu with exp in both branches": (
        "test_activations",
        activations(elu="torch.where(x > 0, x, alpha * (torch.exp(x) - 1))"),
    ),
    "leaky relu is a relu": ("test_activations", activations(leaky="torch.clamp(x, min=0)")),
    "log of the softmax": (
        "test_cross_entropy",
        cross_entropy(
            log_p="log_p = torch.log(torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True))"
        ),
    ),
    "smoothing over the other classes": (
        "test_cross_entropy",
        cross_entropy(
            smoothed="(1 - label_smoothing) * one_hot + label_smoothing / (m - 1) * (1 - one_hot)"
        ),
    ),
    "an unknown reduction accepted": ("test_cross_entropy", cross_entropy(check=False)),
    "xavier bound from fan_in only": ("test_init", init(bound="gain * math.sqrt(6.0 / fan_in)")),
    "xavier as a normal": (
        "test_init",
        init(
            draw="w.normal_(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)"
        ),
    ),
    "kaiming variance used as std": (
        "test_init",
        init(std='2.0 / (fan_in if mode == "fan_in" else fan_out)'),
    ),
    "generator ignored": ("test_init", init(generator="None")),
    "fans without the kernel": ("test_init", init(kernel="1")),
}

CORRECT = {
    "max and maximum": {
        "softmax": "def softmax(z, dim=-1):\n"
        "    e = (z - z.max(dim=dim, keepdim=True).values).exp()\n"
        "    return e / e.sum(dim=dim, keepdim=True)\n",
        **activations(
            leaky="torch.maximum(x, negative_slope * x)",
            elu="torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0)) - 1))",
        ),
        **cross_entropy(
            log_p="M = logits.max(dim=1, keepdim=True).values\n"
            "    log_p = logits - M - (logits - M).exp().sum(1, keepdim=True).log()"
        ),
        **init(
            draw="w.copy_((torch.rand(w.shape, generator=generator, device=w.device,"
            " dtype=w.dtype) * 2 - 1) * bound)"
        ),
    },
    "gather and masks": {
        **activations(
            leaky="x * (x > 0) + negative_slope * x * (x <= 0)",
            elu="torch.where(x > 0, x, alpha * torch.expm1(x.clamp(max=0)))",
        ),
        "cross_entropy": """
def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0):
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"unknown reduction {reduction}")
    m = logits.shape[-1]
    top = logits.amax(dim=1, keepdim=True)
    lse = top + torch.log(torch.sum(torch.exp(logits - top), dim=1, keepdim=True))
    log_p = logits - lse
    nll = -log_p.gather(1, target[:, None]).squeeze(1)
    smooth = -log_p.mean(dim=1)
    loss = (1 - label_smoothing) * nll + label_smoothing * smooth
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]
""",
        **init(std='(2.0 / {"fan_in": fan_in, "fan_out": fan_out}[mode]) ** 0.5'),
    },
    "standard normal scaled": {
        **init(
            kernel="w[0][0].numel()",
            bound="gain * (6.0 / (fan_in + fan_out)) ** 0.5",
        ),
        "softmax": "def softmax(z, dim=-1):\n"
        "    z = z - torch.amax(z, dim, keepdim=True)\n"
        "    return torch.exp(z) / torch.exp(z).sum(dim, keepdim=True)\n",
    },
}

# Correct forms that round differently (issue 19, item 6): softmax through logsumexp (allowed
# for softmax, not for the cross-entropy), in-place division, leaky ReLU as a lerp between
# its two branches, the smoothed loss as a lerp between the NLL and the mean, init drawn
# out of place and copied in.
CORRECT["lerp, logsumexp and in place"] = {
    "softmax": "def softmax(z, dim=-1):\n"
    "    return torch.exp(z - torch.logsumexp(z, dim=dim, keepdim=True))\n",
    **activations(
        leaky="torch.lerp(negative_slope * x, x, (x > 0).to(x.dtype))",
        elu="torch.where(x > 0, x, torch.expm1(torch.clamp(x, max=0.0)).mul(alpha))",
    ),
    "cross_entropy": """
def cross_entropy(logits, target, reduction="mean", label_smoothing=0.0):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(reduction)
    shifted = logits - logits.amax(dim=1, keepdim=True)
    log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    nll = -torch.gather(log_p, 1, target.unsqueeze(1)).squeeze(1)
    loss = torch.lerp(nll, -log_p.mean(dim=1), label_smoothing)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / loss.numel()
""",
    **init(
        draw="w.copy_(torch.empty_like(w).uniform_(-bound, bound, generator=generator))",
        std='1.0 / math.sqrt((fan_in if mode == "fan_in" else fan_out) / 2.0)',
    ),
}
CORRECT["softmax exponentiated in place"] = {  # exp_ keeps its output for the gradient
    "softmax": "def softmax(z, dim=-1):\n"
    "    e = (z - z.amax(dim=dim, keepdim=True)).exp_()\n"
    "    return e * e.sum(dim=dim, keepdim=True).reciprocal()\n",
}
