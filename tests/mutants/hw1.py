"""hw1: plausible wrong answers (one defect each) and correct answers written another way.

``WRONG[name] = (question, {answer grade_id: source})``: the notebook gets the instructor's
answers except these, and must lose the points of the test cell ``question``.
``CORRECT[name] = {answer grade_id: source}``: must earn full marks.
"""

SOLUTION_GRADIENT = """
def cubic_gradients(x, y, coeffs):
    a, b, c, d = coeffs
    r = {r} * (a + b * x + c * x**2 + d * x**3 - y)
    return torch.stack([r.{red}(), (r * x).{red}(), (r * x**2).{red}(), (r * x**3).{red}()])
"""

WRONG = {
    "gradient without the factor 2": (
        "test_cubic_gradients",
        {"cubic_gradients": SOLUTION_GRADIENT.format(r="1.0", red="sum")},
    ),
    "gradient with the wrong sign": (
        "test_cubic_gradients",
        {"cubic_gradients": SOLUTION_GRADIENT.format(r="-2.0", red="sum")},
    ),
    "gradient always float32": (
        "test_cubic_gradients",
        {
            "cubic_gradients": """
def cubic_gradients(x, y, coeffs):
    a, b, c, d = coeffs
    r = 2 * (a + b * x + c * x**2 + d * x**3 - y)
    return torch.tensor([float((r * x**k).sum()) for k in range(4)], device=coeffs.device)
"""
        },
    ),
    "forward difference": (
        "test_central_difference",
        {
            "central_difference": """
def central_difference(f, w, h=1e-5):
    w = w.detach().clone()
    grad = torch.zeros_like(w)
    base = float(f(w))
    for j in range(w.numel()):
        w.view(-1)[j] += h
        grad.view(-1)[j] = (float(f(w)) - base) / h
        w.view(-1)[j] -= h
    return grad
"""
        },
    ),
    "entry left perturbed": (
        "test_central_difference",
        {
            "central_difference": """
def central_difference(f, w, h=1e-5):
    w = w.detach().clone()
    grad = torch.zeros_like(w)
    flat, out = w.view(-1), grad.view(-1)
    for j in range(flat.numel()):
        original = flat[j].item()
        flat[j] = original + h
        f_plus = float(f(w))
        flat[j] = original - h
        f_minus = float(f(w))
        out[j] = (f_plus - f_minus) / (2 * h)
    return grad
"""
        },
    ),
    "w changed by rounding": (
        "test_central_difference",
        {
            "central_difference": """
def central_difference(f, w, h=1e-5):
    grad = torch.zeros_like(w)
    flat, out = w.view(-1), grad.view(-1)
    for j in range(flat.numel()):
        flat[j] += h
        f_plus = float(f(w))
        flat[j] -= 2 * h
        f_minus = float(f(w))
        flat[j] += h
        out[j] = (f_plus - f_minus) / (2 * h)
    return grad
"""
        },
    ),
    "step rebinds the list": (
        "test_gradient_descent_step",
        {
            "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    for i, (p, g) in enumerate(zip(params, grads)):
        params[i] = (p - lr * g).detach().requires_grad_(True)
"""
        },
    ),
    "step goes uphill": (
        "test_gradient_descent_step",
        {
            "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p += lr * g
"""
        },
    ),
    "step replaces .data": (
        "test_gradient_descent_step",
        {
            "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    for p, g in zip(params, grads):
        p.data = p.data - lr * g
"""
        },
    ),
    "loss recorded after the step": (
        "test_fit_cubic",
        {
            "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    coeffs = coeffs.detach().clone()
    losses = []
    for _ in range(num_steps):
        gradient_descent_step([coeffs], [cubic_gradients(x, y, coeffs)], lr)
        a, b, c, d = coeffs
        losses.append(float((a + b * x + c * x**2 + d * x**3 - y).pow(2).sum()))
    return coeffs, losses
"""
        },
    ),
    "start not copied": (
        "test_fit_cubic",
        {
            "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    losses = []
    for _ in range(num_steps):
        a, b, c, d = coeffs
        losses.append(float((a + b * x + c * x**2 + d * x**3 - y).pow(2).sum()))
        gradient_descent_step([coeffs], [cubic_gradients(x, y, coeffs)], lr)
    return coeffs, losses
"""
        },
    ),
    "losses as tensors": (
        "test_fit_cubic",
        {
            "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    coeffs = coeffs.detach().clone()
    losses = []
    for _ in range(num_steps):
        a, b, c, d = coeffs
        losses.append((a + b * x + c * x**2 + d * x**3 - y).pow(2).sum())
        gradient_descent_step([coeffs], [cubic_gradients(x, y, coeffs)], lr)
    return coeffs, losses
"""
        },
    ),
}

CORRECT = {
    "matrix form": {
        "cubic_gradients": """
def cubic_gradients(x, y, coeffs):
    V = torch.stack([torch.ones_like(x), x, x * x, x * x * x], dim=1).to(coeffs.dtype)
    return 2 * V.T @ (V @ coeffs - y)
""",
        "central_difference": """
def central_difference(f, w, h=1e-5):
    out = torch.empty_like(w)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in w.shape]).reshape(
        w.numel(), -1
    ).tolist():
        e = torch.zeros_like(w)
        e[tuple(index)] = h
        out[tuple(index)] = (f(w + e) - f(w - e)) / (2 * h)
    return out
""",
        "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(g, alpha=-lr)
""",
        "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    w = coeffs.clone().detach()
    losses = []
    for _ in range(num_steps):
        y_hat = ((w[3] * x + w[2]) * x + w[1]) * x + w[0]
        losses.append(((y_hat - y) ** 2).sum().item())
        gradient_descent_step([w], [cubic_gradients(x, y, w)], lr)
    return w, losses
""",
    },
    "loops and horner": {
        "cubic_gradients": """
def cubic_gradients(x, y, coeffs):
    a, b, c, d = coeffs.unbind()
    r = 2 * (((d * x + c) * x + b) * x + a - y)
    powers = [torch.ones_like(x), x, x.pow(2), x.pow(3)]
    return torch.stack([(r * q).sum() for q in powers]).to(coeffs)
""",
        "central_difference": """
def central_difference(f, w, h=1e-5):
    flat = w.detach().reshape(-1).clone()
    grads = []
    for j in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[j] += h
        minus[j] -= h
        grads.append((f(plus.view(w.shape)) - f(minus.view(w.shape))) / (2 * h))
    return torch.stack(grads).reshape(w.shape).to(w.dtype)
""",
        "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    with torch.no_grad():
        torch._foreach_add_(list(params), list(grads), alpha=-lr)
""",
    },
    "pow and sub_": {
        "cubic_gradients": """
def cubic_gradients(x, y, coeffs):
    residual = sum(coeffs[k] * x**k for k in range(4)) - y
    return torch.stack([2 * (residual * x**k).sum() for k in range(4)])
""",
        "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    for p, g in zip(params, grads):
        with torch.no_grad():
            p.sub_(lr * g)
""",
    },
}

# Correct forms that round differently (issue 19, item 6): fused multiply-adds (addcmul, a
# fused gradient step through lerp), an einsum in place of four sums, a loss as a dot
# product or a squared norm, a step made out of place and copied back. The hidden tests'
# tolerances are derived from the rounding of exactly such differences (see their comments).
CORRECT["fused and reordered"] = {
    "cubic_gradients": """
def cubic_gradients(x, y, coeffs):
    a, b, c, d = coeffs
    x2 = x * x
    y_hat = torch.addcmul(torch.addcmul(torch.addcmul(a.expand_as(x), b, x), c, x2), d, x2 * x)
    powers = torch.stack([torch.ones_like(x), x, x2, x2 * x])
    return 2 * torch.einsum("kn,n->k", powers, y_hat - y)
""",
    "central_difference": """
def central_difference(f, w, h=1e-5):
    grad = torch.empty_like(w)
    for j in range(w.numel()):
        e = torch.zeros_like(w).view(-1)
        e[j] = h
        e = e.view(w.shape)
        grad.view(-1)[j] = (f(w + e) - f(w - e)) * (0.5 / h)
    return grad
""",
    "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.copy_(torch.lerp(p, p - g, lr))
""",
    "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    coeffs = torch.clone(coeffs).detach()
    losses = []
    for _ in range(num_steps):
        r = coeffs[0] + x * (coeffs[1] + x * (coeffs[2] + x * coeffs[3])) - y
        losses.append(torch.dot(r, r).item())
        gradient_descent_step([coeffs], [cubic_gradients(x, y, coeffs)], lr)
    return coeffs, losses
""",
}
CORRECT["addcmul step, norm loss"] = {
    "gradient_descent_step": """
def gradient_descent_step(params, grads, lr):
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.addcmul_(g, torch.full_like(g, lr), value=-1)
""",
    "fit_cubic": """
def fit_cubic(x, y, coeffs, lr, num_steps):
    w = coeffs.detach().clone()
    losses = []
    for _ in range(num_steps):
        y_hat = torch.stack([w[k] * x**k for k in range(4)]).sum(dim=0)
        losses.append(float(torch.linalg.vector_norm(y_hat - y) ** 2))
        gradient_descent_step([w], [cubic_gradients(x, y, w)], lr)
    return w, losses
""",
}
