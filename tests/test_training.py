"""Tests of the generic training loop dnncourse.train and its helpers.

The oracle is a loop written out by hand (the SGD chapter's loop) with the same generator:
in float64 the two must agree exactly, step for step.
"""

import functools
import math

import pytest
import torch
from torch import nn

import dnncourse
from dnncourse.models import mlp
from dnncourse.training import (
    Callback,
    History,
    accuracy,
    evaluate,
    fit_classifier,
    fit_mlp,
    sampled_batches,
    shuffled_batches,
    snapshot,
    train,
)

CPU = "cpu"


def regression_data(m=23, n=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g, dtype=dtype)
    y = X @ torch.randn(n, 1, generator=g, dtype=dtype) + 0.1 * torch.randn(
        m, 1, generator=g, dtype=dtype
    )
    return X, y


def linear_model(n=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Linear(n, 1).to(dtype)


def fit(model=None, data=None, **kwargs):
    model = linear_model() if model is None else model
    X, y = regression_data() if data is None else data
    opt = kwargs.pop("optimizer", None) or torch.optim.SGD(model.parameters(), lr=0.05)
    options = {"num_epochs": 3, "batch_size": 5, "device": CPU, "progress": False} | kwargs
    return train(model, nn.MSELoss(), opt, (X, y), **options), model, opt


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize(("m", "B"), [(23, 5), (20, 5), (7, 10), (1, 1), (9, 1)])
def test_shuffled_batches_visit_every_index_once(m, B):
    g = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(m, B, g))
    assert len(batches) == math.ceil(m / B)
    assert all(len(b) == B for b in batches[:-1]) and 1 <= len(batches[-1]) <= B
    assert sorted(torch.cat(batches).tolist()) == list(range(m))


def test_shuffled_batches_is_a_permutation_from_the_generator():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = torch.cat(list(shuffled_batches(50, 8, g1)))
    assert torch.equal(got, torch.randperm(50, generator=g2))
    assert not torch.equal(got, torch.arange(50)), "the order should be shuffled"


def test_sampled_batches_draw_with_replacement():
    g = torch.Generator().manual_seed(0)
    batches = list(sampled_batches(10, 4, g))
    assert len(batches) == 3 and all(len(b) == 4 for b in batches), "ceil(10/4) batches of 4"
    draws = torch.cat([torch.cat(list(sampled_batches(10, 4, g))) for _ in range(500)])
    assert draws.min() >= 0 and draws.max() < 10
    # 6000 uniform draws: each count is Binomial(6000, 0.1), mean 600, std 23; allow 5 std
    counts = torch.bincount(draws, minlength=10)
    assert (counts - 600).abs().max() < 5 * 23.3, counts
    # with replacement, a batch of 4 out of 10 repeats an index with prob 1 - 10*9*8*7/10^4
    many = [b for _ in range(1000) for b in sampled_batches(10, 4, g)]
    rate = sum(len(set(b.tolist())) < 4 for b in many) / len(many)
    p = 1 - 10 * 9 * 8 * 7 / 10**4  # 0.496; std of the rate over 3000 batches is 0.009
    assert abs(rate - p) < 5 * 0.0092, rate


@pytest.mark.parametrize("fn", [shuffled_batches, sampled_batches])
@pytest.mark.parametrize(("m", "B"), [(0, 2), (5, 0), (5, -1)])
def test_batching_rejects_bad_sizes(fn, m, B):
    with pytest.raises(ValueError):
        list(fn(m, B))


# ---------------------------------------------------------------- equality with a hand loop


def hand_loop(model, X, y, X_val, y_val, lr, num_epochs, B, generator, sampling="shuffle"):
    """The practical-SGD loop written out: permute, split, step; evaluate after each epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.MSELoss()
    train_loss, val_loss, batch_loss = [], [], []
    for _ in range(num_epochs):
        if sampling == "shuffle":
            batches = torch.randperm(len(X), generator=generator).split(B)
        else:
            k = math.ceil(len(X) / B)
            batches = [torch.randint(len(X), (B,), generator=generator) for _ in range(k)]
        total = 0.0
        for idx in batches:
            loss = loss_fn(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            batch_loss.append(loss.item())
            total += loss.item() * len(idx)
        train_loss.append(total / len(X) if sampling == "shuffle" else total / (k * B))
        with torch.no_grad():
            val_loss.append(loss_fn(model(X_val), y_val).item())
    return train_loss, val_loss, batch_loss


@pytest.mark.parametrize("sampling", ["shuffle", "replacement"])
def test_train_equals_the_hand_written_loop_exactly(sampling):
    X, y = regression_data(23)
    X_val, y_val = regression_data(11, seed=1)
    ours, theirs = linear_model(), linear_model()
    opt = torch.optim.SGD(ours.parameters(), lr=0.05)
    history = train(
        ours, nn.MSELoss(), opt, (X, y), (X_val, y_val), num_epochs=4, batch_size=5,
        sampling=sampling, device=CPU, generator=torch.Generator().manual_seed(3), progress=False,
    )  # fmt: skip
    expected = hand_loop(
        theirs, X, y, X_val, y_val, 0.05, 4, 5, torch.Generator().manual_seed(3), sampling
    )
    assert history.train_loss == expected[0]
    assert history.val_loss == expected[1]
    assert history.batch_loss == expected[2]
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_same_generator_seed_same_run_and_other_seed_differs():
    runs = [fit(generator=torch.Generator().manual_seed(s))[0].batch_loss for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# ---------------------------------------------------------------- history


def test_history_fields_and_dataframe():
    X, y = regression_data()
    Xv, yv = regression_data(8, seed=2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    labels, val_labels = (y[:, 0] > 0).long(), (yv[:, 0] > 0).long()
    history = train(
        model, nn.CrossEntropyLoss(), opt, (X, labels), (Xv, val_labels), num_epochs=3,
        batch_size=10, metrics={"accuracy": accuracy}, device=CPU, progress=False,
    )  # fmt: skip
    assert isinstance(history, History) and history.num_epochs == 3
    assert len(history.val_loss) == len(history.lr) == len(history.val_metrics["accuracy"]) == 3
    assert len(history.batch_loss) == 3 * 3, "ceil(23 / 10) = 3 batches per epoch"
    assert history.stopped_epoch is None and history.lr == [0.1] * 3
    final = evaluate(model, nn.CrossEntropyLoss(), Xv, val_labels, {"accuracy": accuracy})
    assert history.val_loss[-1] == final["loss"]
    assert history.val_metrics["accuracy"][-1] == final["accuracy"]
    df = history.to_dataframe()
    assert list(df.columns) == ["train_loss", "val_loss", "val_accuracy", "lr"]
    assert list(df.index) == [1, 2, 3]


def test_train_loss_is_the_sample_weighted_mean_of_batch_losses():
    history, _, _ = fit(num_epochs=1, batch_size=10)  # batches of 10, 10, 3
    b = history.batch_loss
    assert history.train_loss[0] == pytest.approx((10 * b[0] + 10 * b[1] + 3 * b[2]) / 23)


def test_accuracy_metric():
    y_hat = torch.tensor([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(y_hat, torch.tensor([1, 0, 0, 1])).item() == 0.5


def test_zero_epochs_returns_empty_history():
    history, _, _ = fit(num_epochs=0)
    assert history.train_loss == [] and history.num_epochs == 0


# ---------------------------------------------------------------- schedulers


def test_epoch_scheduler_steps_once_per_epoch():
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history, _, _ = fit(model, optimizer=opt, scheduler=sched, num_epochs=4)
    assert history.lr == [1.0, 0.5, 0.25, 0.125], "lr used in each epoch"
    assert sched.last_epoch == 4


def test_batch_scheduler_steps_once_per_batch():
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k))
    history, _, _ = fit(model, optimizer=opt, scheduler=sched, scheduler_interval="batch")
    assert sched.last_epoch == 3 * 5, "3 epochs of ceil(23/5) = 5 batches"
    assert history.lr == [1.0, 1 / 6, 1 / 11], "lr at the start of each epoch"


def test_batch_scheduler_changes_the_steps_exactly():
    """With lr_k = 1/(1+k) per batch, the run equals a hand loop that sets lr itself."""
    X, y = regression_data()
    ours, theirs = linear_model(), linear_model()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k))
    fit(ours, optimizer=opt, scheduler=sched, scheduler_interval="batch",
        generator=torch.Generator().manual_seed(0))  # fmt: skip
    g, k = torch.Generator().manual_seed(0), 0
    opt2 = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(3):
        for idx in torch.randperm(len(X), generator=g).split(5):
            opt2.param_groups[0]["lr"] = 0.1 * (1 / (1 + k))  # LambdaLR: base_lr * factor(k)
            opt2.zero_grad()
            nn.MSELoss()(theirs(X[idx]), y[idx]).backward()
            opt2.step()
            k += 1
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


class Scripted(nn.Module):
    """A model whose validation loss is scripted: 1.0 for two epochs, then flat at 1.0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, X):
        return X * 0 + self.w * 0 + 1.0


@pytest.mark.parametrize("with_val", [True, False])
def test_reduce_on_plateau_is_stepped_with_the_watched_loss(with_val):
    model = Scripted()
    X, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    seen = []
    original = sched.step
    sched.step = lambda value: (seen.append(value), original(value))[1]
    history = train(
        model, nn.MSELoss(), opt, (X, y), (X, y + 3.0) if with_val else None, num_epochs=5,
        batch_size=2, scheduler=sched, scheduler_interval="batch", device=CPU, progress=False,
    )  # fmt: skip
    watched = history.val_loss if with_val else history.train_loss
    assert seen == watched, "stepped once per epoch (even with interval='batch'), with the loss"
    # constant loss: best at epoch 0, patience 1 -> halve after epochs 2 and 4
    assert history.lr == [1.0, 1.0, 1.0, 0.5, 0.5]


# ---------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.events, self.stop_at = [], stop_at

    def on_train_begin(self, model, history):
        self.events.append("begin")

    def on_epoch_end(self, epoch, model, history):
        self.events.append(epoch)
        assert history.num_epochs == epoch + 1, "history is up to date when the hook runs"
        return self.stop_at is not None and epoch >= self.stop_at

    def on_train_end(self, model, history):
        self.events.append("end")


def test_callbacks_are_called_in_order():
    rec = Recorder()
    fit(callbacks=[rec], num_epochs=3)
    assert rec.events == ["begin", 0, 1, 2, "end"]


def test_callback_stops_training_and_all_callbacks_still_run():
    stopper, watcher = Recorder(stop_at=1), Recorder()
    history, _, _ = fit(callbacks=[stopper, watcher], num_epochs=10)
    assert history.stopped_epoch == 1 and history.num_epochs == 2
    assert stopper.events == watcher.events == ["begin", 0, 1, "end"]


def test_snapshot_is_a_deep_copy():
    model = linear_model()
    saved = snapshot(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(saved["weight"], model.weight)
    model.load_state_dict(saved)
    assert torch.equal(saved["weight"], model.weight)


# ---------------------------------------------------------------- penalty and transform


def test_penalty_is_added_to_the_objective_but_not_to_the_recorded_loss():
    """SGD with penalty lam*||w||^2 equals SGD on the loss with weight_decay = 2*lam."""
    lam = 0.3
    pen = lambda model, X: lam * model.weight.square().sum()  # noqa: E731
    history, ours, _ = fit(penalty=pen, generator=torch.Generator().manual_seed(0))
    theirs = linear_model()
    decay_opt = torch.optim.SGD(
        [{"params": [theirs.weight], "weight_decay": 2 * lam}, {"params": [theirs.bias]}], lr=0.05
    )
    reference, _, _ = fit(theirs, optimizer=decay_opt, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours.weight, theirs.weight)
    torch.testing.assert_close(ours.bias, theirs.bias)
    torch.testing.assert_close(history.batch_loss, reference.batch_loss)


def test_penalty_receives_the_model_and_the_batch():
    calls = []

    def pen(model, X):
        calls.append((model, X.shape[0]))
        return X.new_zeros(())

    _, model, _ = fit(penalty=pen, num_epochs=1)
    assert [c[1] for c in calls] == [5, 5, 5, 5, 3] and all(c[0] is model for c in calls)


def test_transform_is_applied_to_training_batches_only():
    seen = {True: [], False: []}

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = linear_model()

        def forward(self, X):
            seen[self.training].append(X.clone())
            return self.lin(X)

    X, y = regression_data()
    model = Spy()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train(model, nn.MSELoss(), opt, (X, y), (X, y), num_epochs=1, batch_size=5,
          transform=torch.neg, device=CPU, progress=False)  # fmt: skip
    rows = lambda T: sorted(map(tuple, T.tolist()))  # noqa: E731
    assert rows(torch.cat(seen[True])) == rows(-X), "training batches are transformed"
    assert rows(torch.cat(seen[False])) == rows(X), "validation data is not"


# ---------------------------------------------------------------- modes and devices


def test_train_mode_for_steps_eval_mode_for_validation():
    modes = []

    class ModeSpy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = linear_model()

        def forward(self, X):
            modes.append((self.training, torch.is_grad_enabled()))
            return self.lin(X)

    model = ModeSpy()
    X, y = regression_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, nn.MSELoss(), opt, (X, y), (X[:4], y[:4]), num_epochs=2, batch_size=10,
          device=CPU, progress=False)  # fmt: skip
    per_epoch = [(True, True)] * 3 + [(False, False)]
    assert modes == per_epoch * 2
    assert model.training, "back in training mode after validation"


@pytest.mark.parametrize("was_training", [True, False])
def test_evaluate_restores_the_mode(was_training):
    model = nn.Sequential(nn.Linear(3, 1), nn.Dropout(0.5)).double()
    model.train(was_training)
    X, y = regression_data()
    first = evaluate(model, nn.MSELoss(), X, y)
    assert model.training == was_training
    assert evaluate(model, nn.MSELoss(), X, y) == first, "dropout is off in eval mode"


def test_evaluate_batches_give_the_same_result():
    model, (X, y) = linear_model(), regression_data(50)
    whole = evaluate(model, nn.MSELoss(), X, y)["loss"]
    assert evaluate(model, nn.MSELoss(), X, y, batch_size=7)["loss"] == pytest.approx(whole)


class _Stop(Exception):
    """Raised by the probe once it has seen the first batch."""


def _where_train_puts(train_fn) -> dict:
    """Devices of the first batch and of the parameters when ``train_fn`` runs the model."""
    seen = {}
    model = linear_model()

    def probe(module, inputs):
        seen["batch"] = inputs[0].device
        seen["params"] = {p.device for p in module.parameters()}
        raise _Stop

    model.register_forward_pre_hook(probe)
    X, y = regression_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(_Stop):
        train_fn(model, nn.MSELoss(), opt, (X, y), num_epochs=1, batch_size=5, progress=False)
    return seen


def test_default_device_holds_the_model_and_every_batch(monkeypatch):
    """device=None: model and batches really live on dnncourse.default_device().

    The patched default is the meta device, so CPU data that reaches the model unmoved (or
    a model left where it was) shows; the probe stops training before any arithmetic.
    """
    meta = torch.device("meta")
    monkeypatch.setattr(dnncourse.training, "default_device", lambda: meta)
    assert _where_train_puts(train) == {"batch": meta, "params": {meta}}
    # the check catches a loop that does not use the default device
    ignores_default = functools.partial(train, device=CPU)
    assert _where_train_puts(ignores_default) != {"batch": meta, "params": {meta}}


def test_one_loss_item_per_batch(monkeypatch):
    """Each step reads the batch loss once (one device sync), not once per use."""
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: calls.append(1) or item(t))
    history, _, _ = fit(num_epochs=2, batch_size=5)  # 23 rows: 5 batches per epoch
    assert len(calls) == len(history.batch_loss) == 2 * 5


@pytest.mark.gpu
def test_cpu_data_and_model_are_moved_to_cuda():
    model = linear_model()
    X, y = regression_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    history = train(model, nn.MSELoss(), opt, (X, y), (X, y), num_epochs=2, batch_size=5,
                    device="cuda", generator=torch.Generator().manual_seed(0),
                    progress=False)  # fmt: skip
    assert next(model.parameters()).device.type == "cuda"
    reference, cpu_model, _ = fit(generator=torch.Generator().manual_seed(0), num_epochs=2)
    torch.testing.assert_close(history.train_loss, reference.train_loss)
    torch.testing.assert_close(model.weight.cpu(), cpu_model.weight)


# ---------------------------------------------------------------- arguments and output


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_epochs": -1}, "num_epochs"),
        ({"sampling": "random"}, "sampling"),
        ({"scheduler_interval": "step"}, "scheduler_interval"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(**kwargs)


def test_metric_named_loss_is_rejected():
    with pytest.raises(ValueError, match="loss"):
        fit(data=regression_data(), metrics={"loss": lambda y_hat, y: 0.0},
            num_epochs=1)  # fmt: skip


def test_bad_batch_size_raises_even_without_epochs():
    with pytest.raises(ValueError, match="batch_size"):
        fit(batch_size=0, num_epochs=0)


def test_mismatched_lengths_raise():
    X, y = regression_data()
    with pytest.raises(ValueError, match="rows"):
        fit(data=(X, y[:-1]))


def test_progress_false_prints_nothing(capfd):
    fit(progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_true_draws_a_bar_that_counts_the_epochs_and_false_none(capfd):
    fit(progress=False, num_epochs=3)
    assert capfd.readouterr().err == "", "progress=False must draw nothing"
    fit(progress=True, num_epochs=3)
    err = capfd.readouterr().err  # tqdm draws on stderr: a bar of 3 epochs, a loss each
    assert "epochs:" in err and "/3 [" in err, err
    assert err.count("loss=") == 3, err


# ---------------------------------------------------------------- fit_classifier


def test_fit_classifier_takes_torch_sgd_steps_with_the_factory_and_generator():
    """Full batch, plain SGD from the factory: exactly torch.optim.SGD's steps; scored."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(3, (30,), generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    reference = nn.Linear(4, 3).double()
    reference.load_state_dict(model.state_dict())
    state = torch.get_rng_state()
    score = fit_classifier(
        model,
        lambda params: torch.optim.SGD(params, lr=0.3),
        (X, y),
        (X[:10], y[:10]),
        num_epochs=5,
        generator=torch.Generator().manual_seed(0),
        device=CPU,
    )
    assert torch.equal(torch.get_rng_state(), state), "fit_classifier touched the global RNG"
    opt = torch.optim.SGD(reference.parameters(), lr=0.3)
    for _ in range(5):
        opt.zero_grad()
        nn.CrossEntropyLoss()(reference(X), y).backward()
        opt.step()
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)
    with torch.no_grad():
        expected = accuracy(reference(X[:10]), y[:10]).item()
        loss = nn.CrossEntropyLoss()(reference(X), y).item()
    assert score.val_accuracy == pytest.approx(expected)
    assert score.train_loss == pytest.approx(loss)
    assert score.gap == pytest.approx(score.train_accuracy - score.val_accuracy)
    assert score.history.num_epochs == 5 and len(score.history.val_metrics["accuracy"]) == 5


def test_fit_classifier_batch_order_comes_from_the_generator():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(40, 2, generator=gen)
    y = (X[:, 0] > 0).long()

    def run(seed):
        torch.manual_seed(0)
        model = nn.Linear(2, 2)
        score = fit_classifier(
            model,
            lambda params: torch.optim.SGD(params, lr=0.5),
            (X, y),
            (X, y),
            num_epochs=3,
            batch_size=8,
            generator=torch.Generator().manual_seed(seed),
            device=CPU,
        )
        return score.history.batch_loss

    assert run(0) == run(0)
    assert run(0) != run(1)


def _classification_data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(24, 4, dtype=torch.float64, generator=gen)
    return X, torch.randint(3, (24,), generator=gen)


@pytest.mark.parametrize("interval", ["epoch", "batch"])
def test_fit_classifier_builds_and_steps_the_scheduler_from_its_factory(interval):
    """make_scheduler(optimizer): the steps of torch.optim.SGD driven by the same StepLR."""
    X, y = _classification_data()
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    reference = nn.Linear(4, 3).double()
    reference.load_state_dict(model.state_dict())
    score = fit_classifier(
        model,
        lambda params: torch.optim.SGD(params, lr=0.4),
        (X, y),
        (X, y),
        num_epochs=4,
        batch_size=12,
        make_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
        scheduler_interval=interval,
        generator=torch.Generator().manual_seed(3),
        device=CPU,
    )
    opt = torch.optim.SGD(reference.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        for idx in shuffled_batches(len(X), 12, gen):
            opt.zero_grad()
            nn.CrossEntropyLoss()(reference(X[idx]), y[idx]).backward()
            opt.step()
            if interval == "batch":
                sched.step()
        if interval == "epoch":
            sched.step()
    torch.testing.assert_close(model.weight, reference.weight)
    per_epoch = 2 if interval == "batch" else 1  # two batches of 12 per epoch
    assert score.history.lr == [0.4 * 0.5 ** (per_epoch * k) for k in range(4)]
    constant = fit_classifier(
        nn.Linear(4, 3).double(),
        lambda params: torch.optim.SGD(params, lr=0.4),
        (X, y),
        (X, y),
        num_epochs=4,
        generator=torch.Generator(),
        device=CPU,
    )
    assert constant.history.lr == [0.4] * 4, "without a factory the rate stays constant"


def test_fit_classifier_refuses_a_scheduler_object():
    """A scheduler object is bound to an optimizer fit_classifier has not built yet."""
    X, y = _classification_data()
    model = nn.Linear(4, 3).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="make_scheduler"):
        fit_classifier(
            model,
            lambda params: opt,
            (X, y),
            (X, y),
            num_epochs=1,
            scheduler=torch.optim.lr_scheduler.StepLR(opt, 1),
            generator=torch.Generator(),
            device=CPU,
        )


def test_fit_mlp_seeds_the_network_and_the_batches_from_one_seed():
    """fit_mlp(seed=s) is mlp(generator=seed s) + fit_classifier(generator=seed s)."""
    X, y = _classification_data()
    X, Xv = X.float(), X[:8].float()
    sgd = lambda params: torch.optim.SGD(params, lr=0.3)  # noqa: E731
    state = torch.get_rng_state()
    model, score = fit_mlp(
        [4, 8, 3], sgd, (X, y), (Xv, y[:8]), num_epochs=3, batch_size=8, seed=5, device=CPU
    )
    assert torch.equal(torch.get_rng_state(), state), "fit_mlp touched the global RNG"
    expected = mlp([4, 8, 3], generator=torch.Generator().manual_seed(5))
    reference = fit_classifier(
        expected,
        sgd,
        (X, y),
        (Xv, y[:8]),
        num_epochs=3,
        batch_size=8,
        generator=torch.Generator().manual_seed(5),
        device=CPU,
    )
    for ours, theirs in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert score.history.batch_loss == reference.history.batch_loss
    _, other = fit_mlp(
        [4, 8, 3], sgd, (X, y), (Xv, y[:8]), num_epochs=3, batch_size=8, seed=6, device=CPU
    )
    assert other.history.batch_loss != score.history.batch_loss, "the seed changes the run"
    normalized, _ = fit_mlp(
        [4, 8, 3],
        sgd,
        (X, y),
        (Xv, y[:8]),
        num_epochs=1,
        mlp_options={"norm": nn.BatchNorm1d},
        device=CPU,
    )
    assert isinstance(normalized[1], nn.BatchNorm1d), "mlp_options reach mlp"
