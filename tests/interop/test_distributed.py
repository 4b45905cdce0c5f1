"""fit_distributed: minicnn's fit on PyTorch's DistributedDataParallel (gloo over 127.0.0.1, spawned processes).

Evidence: with the same seed, data order and float64, the weights, optimizer state and History after
a few steps equal ``model.fit``'s (one process, and two processes sharing each batch unevenly); two
processes train the embedded Fashion-MNIST sample as one does; rank 0's PyTorch predictions equal the
returned model's; every error stops the run with one message and leaves the model as it was.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import assert_within, model_forward_bound, sparse_crossentropy_bound
from PIL import Image

import minicnn
import minicnn.inspect
from minicnn import cli, config, losses
from minicnn.datasets import fashion_mnist
from minicnn.layers import (
    AveragePooling2D,
    BatchNormalization,
    Conv2D,
    Dense,
    Flatten,
    Input,
    MaxPooling2D,
    RandomFlip,
    Rescaling,
)
from minicnn.losses import MeanSquaredError
from minicnn.models import Sequential
from minicnn.optimizers import SGD, Adam, RMSprop
from minicnn.regularizers import l2
from minicnn.schedules import ExponentialDecay
from minicnn.utils import set_random_seed

torch = pytest.importorskip("torch", reason="fit_distributed trains on PyTorch: pip install 'minicnn[torch]'")
from minicnn.interop import fit_distributed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("default_settings")

# float64 rounding is ~1e-16 per operation; a few steps of a small model stay far below 1e-12, while
# PyTorch's own Adam/RMSprop/SGD forms (epsilon placement, momentum before the rate) move weights by
# more than 1e-8 within these steps.
TIGHT = 1e-12


def small_model(optimizer, batchnorm=False, regularizer=None):
    set_random_seed(0)
    model = Sequential([Input(shape=(8, 8, 1)), Conv2D(3, 3, activation="relu", kernel_regularizer=regularizer)]
                       + ([BatchNormalization()] if batchnorm else [])
                       + [MaxPooling2D(), Flatten(), Dense(4, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def snapshot(model):
    """Everything an error must leave as it was: weights, optimizer state, minicnn's generator."""
    return model.get_weights(), model.optimizer.get_state(), config.rng().bit_generator.state


def assert_unchanged(model, before):
    weights, state, rng_state = before
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.get_state()["iterations"] == state["iterations"]
    assert config.rng().bit_generator.state == rng_state


def assert_same_training(a, b, ha, hb, tol):
    """Two models trained from the same start: weights, optimizer slots and History agree within tol."""
    for i, (wa, wb) in enumerate(zip(a.get_weights(), b.get_weights(), strict=True)):
        np.testing.assert_allclose(wb, wa, rtol=0, atol=tol, err_msg=f"weight {i}")
    sa, sb = a.optimizer.get_state(), b.optimizer.get_state()
    assert sa["iterations"] == sb["iterations"]
    assert len(sa["slots"]) == len(sb["slots"])
    for (ka, slots_a), slots_b in zip(sa["slots"].items(), sb["slots"].values()):   # same layer order
        assert slots_a.keys() == slots_b.keys(), ka
        for name in slots_a:
            np.testing.assert_allclose(slots_b[name], slots_a[name], rtol=0, atol=tol, err_msg=f"{ka} {name}")
    assert ha.history.keys() == hb.history.keys()
    for key in ha.history:
        np.testing.assert_allclose(hb.history[key], ha.history[key], rtol=0, atol=tol, err_msg=key)


@pytest.mark.parametrize("make_optimizer, nproc, batchnorm", [
    (lambda: Adam(ExponentialDecay(1e-2, decay_steps=3, decay_rate=0.5), clipnorm=0.05), 1, True),
    (lambda: RMSprop(1e-2, momentum=0.5, global_clipnorm=0.1), 1, True),
    # two processes: the last batch of each epoch (1 sample) leaves process 1 an empty share
    (lambda: SGD(0.1, momentum=0.9, nesterov=True, clipvalue=0.02), 2, False),
], ids=["adam-1", "rmsprop-1", "sgd-2"])
def test_the_torch_engine_takes_the_steps_fit_takes(make_optimizer, nproc, batchnorm):
    minicnn.set_floatx("float64")
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((42, 8, 8, 1)), rng.integers(0, 4, 42)   # 33 to train: batches 8, 8, 8, 8, 1
    a = small_model(make_optimizer(), batchnorm, l2(1e-3))
    b = small_model(make_optimizer(), batchnorm, l2(1e-3))
    set_random_seed(1)
    ha = a.fit(x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=0)
    after_fit = config.rng().bit_generator.state
    set_random_seed(1)
    hb = fit_distributed(b, x, y, batch_size=8, epochs=2, validation_split=0.2, verbose=0, nproc=nproc)
    assert config.rng().bit_generator.state == after_fit       # the same draws: shuffling goes on alike
    assert hb is b.history and hb.engine["nproc"] == nproc
    assert b.optimizer.iterations == 2 * 5
    assert_same_training(a, b, ha, hb, TIGHT)
    # rank 0's PyTorch outputs for the validation samples are the returned model's
    np.testing.assert_allclose(hb.engine["predictions"], b.predict(x[33:], verbose=0), rtol=0, atol=TIGHT)
    # and minicnn carries on from the optimizer state the processes left
    a.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    b.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, rtol=0, atol=TIGHT)


LOSS_CASES = [(losses.SparseCategoricalCrossentropy(), "labels"), (losses.CategoricalCrossentropy(), "soft"),
              (losses.CategoricalCrossentropy(from_logits=True), "soft"), (losses.BinaryCrossentropy(), "binary"),
              (losses.BinaryCrossentropy(from_logits=True), "binary"), (losses.MeanSquaredError(), "soft")]


@pytest.mark.parametrize("loss, targets, fused", [(loss, targets, fused) for loss, targets in LOSS_CASES
                                                  for fused in (False, True) if loss.fuses_with or not fused])
def test_each_loss_has_minicnn_gradient_in_pytorch(loss, targets, fused):
    """``worker.loss_terms`` / N differentiated by autograd = minicnn's ``gradient`` (or the fused
    ``logits_gradient`` when the final softmax/sigmoid is folded into the loss), in float64."""
    from minicnn.activations import sigmoid, softmax
    from minicnn.interop.worker import loss_terms

    rng = np.random.default_rng(9)
    z = rng.standard_normal((5, 4)) * 3
    y = {"labels": rng.integers(0, 4, 5), "soft": rng.dirichlet(np.ones(4), 5),
         "binary": rng.integers(0, 2, (5, 4)).astype(float)}[targets]
    activation = softmax if loss.fuses_with == "softmax" else sigmoid
    out = z
    if not fused and not loss.from_logits and loss.fuses_with:   # probabilities, one of them clipped
        out = activation(z)
        out[0, 0] = 1e-9
    t = torch.tensor(out, requires_grad=True)
    value = loss_terms(loss, fused)(t, torch.tensor(y, dtype=torch.float64)) / len(z)
    value.backward()
    expected = loss.logits_gradient(y, activation(z)) if fused else loss.gradient(y, out)
    np.testing.assert_allclose(t.grad.numpy(), expected, rtol=0, atol=TIGHT)
    if not fused:          # and the value, where the loss is written on the same outputs
        np.testing.assert_allclose(value.item(), loss(y, out), rtol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9), lambda: SGD(ExponentialDecay(0.1, 4, 0.5), momentum=0.5, nesterov=True),
    lambda: RMSprop(0.01), lambda: RMSprop(0.01, rho=0.8, momentum=0.9, epsilon=1e-3, clipvalue=0.5),
    lambda: Adam(0.01), lambda: Adam(0.01, beta_1=0.5, epsilon=1e-2, global_clipnorm=1.0), lambda: Adam(0.01, clipnorm=0.3),
], ids=["sgd", "momentum", "nesterov-schedule", "rmsprop", "rmsprop-momentum-clip", "adam", "adam-global-clip",
        "adam-clipnorm"])
def test_keras_optimizer_follows_minicnn_for_twelve_steps(make):
    """``worker.KerasOptimizer`` on tensors against ``minicnn.optimizers`` on arrays, the same gradients."""
    from minicnn.interop.worker import KerasOptimizer

    rng = np.random.default_rng(10)
    minicnn.set_floatx("float64")
    layer = Dense(3)
    layer.build((None, 4))
    w = torch.tensor(layer.params["kernel"].copy(), requires_grad=True)
    b = torch.tensor(layer.params["bias"].copy(), requires_grad=True)
    ours, theirs = make(), KerasOptimizer([w, b], make())
    for _ in range(12):
        layer.grads = {"kernel": rng.standard_normal((4, 3)), "bias": rng.standard_normal(3)}
        w.grad, b.grad = torch.tensor(layer.grads["kernel"]), torch.tensor(layer.grads["bias"])
        theirs.step(theirs.spec.learning_rate, theirs.spec.iterations + 1)
        theirs.spec.iterations += 1
        ours.apply_gradients([layer])
    np.testing.assert_allclose(w.detach().numpy(), layer.params["kernel"], rtol=0, atol=TIGHT)
    np.testing.assert_allclose(b.detach().numpy(), layer.params["bias"], rtol=0, atol=TIGHT)


def test_two_processes_train_the_embedded_sample_as_one_does(tmp_path):
    (x, y), (xt, yt) = fashion_mnist.load_data(sample=True)
    x, xt = x[..., None], xt[..., None]

    def model():
        set_random_seed(3)
        m = Sequential([Input(shape=(28, 28, 1)), Rescaling(1 / 255), Conv2D(8, 3, activation="relu"), MaxPooling2D(),
                        Flatten(), Dense(10, activation="softmax")])
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    one, two = model(), model()
    set_random_seed(4)
    one.fit(x, y, batch_size=64, epochs=1, verbose=0)
    set_random_seed(4)
    history = fit_distributed(two, x, y, batch_size=64, epochs=1, validation_data=(xt, yt), verbose=0, nproc=2)
    acc_one = one.evaluate(xt, yt, verbose=0)[1]
    loss_two, acc_two = two.evaluate(xt, yt, verbose=0)
    assert acc_one > 0.6                                  # it learned (10 classes: chance is 0.1)
    assert abs(acc_two - acc_one) <= 0.02, (acc_one, acc_two)
    # the History's validation numbers (PyTorch, two shares) are minicnn's evaluate of the returned model:
    # both within the float32 bound derived from the model's sums (tests/helpers.py) of the exact loss,
    # the typical sqrt(K) one (a mean of 1,000 samples through a Dense layer of 1,352 inputs: the worst
    # case, 1e-2, would not see a kernel off by 1%, which moves the loss by 1.6e-3; this one, 1.3e-3, does)
    p, bound = model_forward_bound(two, xt, typical=True)
    exact_loss, loss_bound = sparse_crossentropy_bound(p, bound, yt, typical=True)
    assert_within("val_loss", history.history["val_loss"][0], exact_loss, loss_bound)
    assert_within("evaluate loss", loss_two, exact_loss, loss_bound)
    # and the accuracy is exact but for samples whose top two probabilities are within the bounds of a tie
    top2 = np.sort(p, axis=1)[:, -2:]
    near_ties = int(np.sum(top2[:, 1] - top2[:, 0] <= 2 * bound.max(axis=1)))
    exact_acc = np.mean(p.argmax(axis=1) == yt)
    assert abs(history.history["val_accuracy"][0] - exact_acc) <= (near_ties + 0.5) / len(yt), near_ties
    assert abs(acc_two - exact_acc) <= (near_ties + 0.5) / len(yt), near_ties
    # float32 predictions: the same derived (worst case) bound as to_torch's in test_interop
    p, bound = model_forward_bound(two, xt[:256])
    assert_within("PyTorch predictions", history.engine["predictions"], p[:256], bound[:256])
    assert_within("minicnn predictions", two.predict(xt[:256], verbose=0), p[:256], bound[:256])
    # the returned model is a minicnn model like any other: it saves, loads and can be inspected
    again = minicnn.models.load_model(two.save(tmp_path / "two.npz"))
    np.testing.assert_array_equal(again.predict(xt[:32], verbose=0), two.predict(xt[:32], verbose=0))
    assert minicnn.inspect.saliency(two, xt[0]).shape == xt[0].shape


# ---------------------------------------------------------------------------------------- errors
class HalfMSE(MeanSquaredError):
    """A loss of the user's own: its gradient is minicnn code PyTorch knows nothing of."""


class Lion(SGD):
    """An optimizer of the user's own."""


def compiled(layers, optimizer="adam", loss="mse"):
    model = Sequential([Input(shape=(5, 5, 1))] + layers)
    model.compile(optimizer=optimizer, loss=loss)
    return model


@pytest.mark.parametrize("make, match", [
    (lambda: compiled([Conv2D(2, 2), AveragePooling2D(2, strides=1, padding="same")]), r"average_pooling2d.*asymmetric"),
    (lambda: compiled([Conv2D(2, 2)], loss=HalfMSE()), "loss HalfMSE has no PyTorch equivalent"),
    (lambda: compiled([Conv2D(2, 2)], optimizer=Lion()), "optimizer Lion has no PyTorch equivalent"),
    (lambda: compiled([Rescaling(0.5), RandomFlip()]), "ends with augmentation; nothing to train"),
    (lambda: compiled([Conv2D(2, 2), RandomFlip(), Flatten(), Dense(2)]), "'random_flip' comes after 'conv2d"),
], ids=["layer", "loss", "optimizer", "augmentation-last", "augmentation-late"])
def test_what_pytorch_cannot_train_is_refused_before_anything_starts(make, match):
    model = make()
    before = snapshot(model)
    x = np.random.default_rng(0).standard_normal((6, 5, 5, 1))
    with pytest.raises(NotImplementedError, match=match):
        fit_distributed(model, x, np.zeros((6,) + model.output_shape[1:]), nproc=2)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, n, match", [
    (dict(nproc=3), 2, r"nproc=3 is larger than the data: 2 training sample"),
    (dict(nproc=4, batch_size=2), 8, r"batch_size=2 cannot be shared by nproc=4"),
    (dict(nproc=0), 8, r"`nproc` must be an integer >= 1"),
    (dict(device="tpu"), 8, r"`device` must be 'cpu' or 'cuda'"),
    (dict(timeout=0), 8, r"`timeout` must be a number of seconds > 0"),
    (dict(validation_split=0.1), 4, r"leaves 3 of 4 samples|one side would be empty"),
])
def test_bad_arguments_give_one_message_and_change_nothing(kwargs, n, match):
    model = small_model("adam")
    before = snapshot(model)
    x, y = np.zeros((n, 8, 8, 1)), np.zeros(n, dtype=int)
    if "validation_split" in kwargs:
        x, y = x[:1], y[:1]
    with pytest.raises(ValueError, match=match):
        fit_distributed(model, x, y, **kwargs)
    assert_unchanged(model, before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="PyTorch sees no CUDA GPU"):
        fit_distributed(small_model("adam"), np.zeros((4, 8, 8, 1)), np.zeros(4, dtype=int), device="cuda")


def fails_in_process_one(y_true, y_pred):
    """A metric that raises in process 1 only (module level: spawned processes import it by name)."""
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("metric exploded in process 1")
    return 0.0


def test_an_error_in_a_process_stops_the_run_with_that_error():
    model = small_model("adam")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=[fails_in_process_one])
    before = snapshot(model)
    x, y = np.zeros((16, 8, 8, 1)), np.zeros(16, dtype=int)
    with pytest.raises(RuntimeError, match=r"process 1 of 2 failed: ValueError: metric exploded in process 1"):
        fit_distributed(model, x, y, batch_size=4, nproc=2, verbose=0)
    assert_unchanged(model, before)
    assert not multiprocessing.active_children()


def reports_its_pid(y_true, y_pred):
    """A metric that tells the test, through a file, that process 1 is training and what its pid is."""
    import torch.distributed as dist

    marker = os.environ.get("MINICNN_TEST_MARKER")
    if marker and dist.get_rank() == 1 and not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
    return 0.0


def test_a_process_killed_while_training_stops_the_run_without_a_hang(tmp_path, monkeypatch):
    model = small_model("adam")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=[reports_its_pid])
    before = snapshot(model)
    marker = tmp_path / "pid"
    monkeypatch.setenv("MINICNN_TEST_MARKER", str(marker))   # the spawned processes inherit it

    def kill_process_one():
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGKILL)   # as the out-of-memory killer would

    killer = threading.Thread(target=kill_process_one, daemon=True)
    killer.start()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"process 1 of 2 died \(signal 9\)\. The run was stopped"):
        fit_distributed(model, np.zeros((16, 8, 8, 1)), np.zeros(16, dtype=int), batch_size=4, epochs=100_000,
                        nproc=2, verbose=0, timeout=60)
    assert time.monotonic() - start < 60                 # stopped by the death, not by the timeout
    killer.join()
    assert_unchanged(model, before)
    assert not multiprocessing.active_children()


UNGUARDED = """
import numpy as np
from minicnn.interop import fit_distributed
from minicnn.layers import Dense, Input
from minicnn.models import Sequential

model = Sequential([Input(shape=(3,)), Dense(20000), Dense(2)])   # 0.5 MB of weights: 8 pipes full
model.compile(optimizer="sgd", loss="mse")
fit_distributed(model, np.zeros((8, 3)), np.zeros((8, 2)), nproc=2, verbose=0)
"""


def test_a_script_without_a_main_guard_gets_told_instead_of_a_hang(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 1
    assert "must guard its entry point with `if __name__ == \"__main__\":`" in done.stderr.splitlines()[-1]


def test_silence_longer_than_the_timeout_stops_every_process():
    model = small_model("adam")
    before = snapshot(model)
    with pytest.raises(TimeoutError, match=r"no news from the 2 process\(es\) for 0 s"):
        # starting a process (importing PyTorch) alone takes longer than 0.2 s
        fit_distributed(model, np.zeros((8, 8, 8, 1)), np.zeros(8, dtype=int), nproc=2, timeout=0.2, verbose=0)
    assert_unchanged(model, before)
    assert not multiprocessing.active_children()


# ---------------------------------------------------------------------------------------- the command
def stripes(folder, rng, n=16, size=12):
    """``folder/{rows,columns}/i.png``: noisy stripes across or down, which flips and small shifts keep."""
    for label, axis in (("rows", 0), ("columns", 1)):
        (folder / label).mkdir(parents=True)
        for i in range(n):
            wave = 127 + 100 * np.sign(np.sin(np.arange(size) * np.pi / 2 + rng.uniform(0, np.pi)))
            pixels = np.repeat(np.expand_dims(wave, 1 - axis), size, axis=1 - axis)
            noisy = np.clip(pixels + rng.normal(0, 15, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(noisy, mode="L").save(folder / label / f"{i}.png")


def test_train_engine_torch_writes_the_same_outputs(tmp_path, capsys):
    stripes(tmp_path / "pics", np.random.default_rng(0))   # no train/ and test/: a seeded 80/20 split
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "pics"), "--epochs", "10", "--batch-size", "4", "--image-size",
            "12", "12", "--seed", "1", "--augment", "--engine", "torch", "--nproc", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "PyTorch engine: 2 process(es) on cpu" in text
    assert "Epoch 10/10\n7/7 " in text                    # rank 0's progress, printed by the command
    assert float(text.split("Test accuracy: ")[1].split()[0]) >= 0.9   # rows vs columns is easy
    for name in ("model.npz", "history.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 1000
    model = minicnn.models.load_model(out / "model.npz")   # augmentation ran in minicnn, and is kept
    assert [type(layer).__name__ for layer in model.layers][:3] == ["Rescaling", "RandomFlip", "RandomTranslation"]


def test_import_minicnn_interop_does_not_import_pytorch():
    code = "import sys, minicnn.interop; assert 'torch' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("argv, message", [
    (["--nproc", "0", "--engine", "torch"], "--nproc must be at least 1 (received 0)"),
    (["--nproc", "2"], "--nproc and --device choose how PyTorch trains: add --engine torch"),
])
def test_engine_arguments_are_checked_first(argv, message, capsys):
    assert cli.main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err == f"minicnn: error: {message}\n"


def test_engine_torch_without_pytorch_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)       # `import torch` now raises ImportError
    assert cli.main(["train", "--engine", "torch"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install torch==2.13.0 (or pip install 'minicnn[torch]')" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
def test_one_gpu_takes_the_steps_fit_takes():
    minicnn.set_floatx("float64")
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((32, 8, 8, 1)), rng.integers(0, 4, 32)
    a, b = small_model(Adam(1e-2), True), small_model(Adam(1e-2), True)
    set_random_seed(2)
    ha = a.fit(x, y, batch_size=8, epochs=2, verbose=0)
    set_random_seed(2)
    hb = fit_distributed(b, x, y, batch_size=8, epochs=2, verbose=0, device="cuda")
    # cuDNN may sum in another order than the CPU: float64 rounding still far below 1e-9 in 8 steps
    assert_same_training(a, b, ha, hb, 1e-9)
