"""One process of ``fit_distributed``: minicnn's training loop, written with PyTorch tensors.

Every process runs ``run(rank, plan_path, queue)``. Step ``s`` of an epoch takes global batch ``s`` of the
epoch's order (drawn by the parent from minicnn's generator, exactly as ``model.fit`` draws it),
splits it into ``world`` contiguous shares, and on its share computes::

    loss_r = sum_{n in share r} L_n * world / B + penalty         # B: samples in the global batch

``DistributedDataParallel`` averages the gradients over the ``world`` processes, so every process
holds ``mean_{n in batch} dL_n/dw + dpenalty/dw``: the gradient ``model.fit`` takes on the whole
batch, whatever the split (shares may differ by one sample, and may be empty at the end of an epoch).
Then each process applies the same update, in Keras's form (``KerasOptimizer``), to its identical copy
of the weights.

The reported loss and metrics are minicnn's own functions on the outputs, summed over the processes
(``all_reduce``), so the progress bar and ``History`` show what ``model.fit`` would.

A BatchNormalization layer sees only its process's share: with ``world > 1`` its batch statistics, and so
the update, differ from ``model.fit``'s (Keras's default, ``synchronized=False``, does the same).
"""

import math
import os
import pickle
import socket
import sys
import traceback
import warnings
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .. import config, losses, optimizers
from ..layers import BatchNormalization, Conv2D, Dense, Input
from ..models import Sequential
from .convert import to_torch

# minicnn layer -> the PyTorch parameter holding each of its weights, and the axes that move
# (Keras layout -> PyTorch layout; the inverse permutation brings optimizer slots back).
PARAMETERS = {
    Conv2D: (nn.Conv2d, {"kernel": ("weight", (3, 2, 0, 1)), "bias": ("bias", None)}),   # (KH,KW,C,F) -> (F,C,KH,KW)
    Dense: (nn.Linear, {"kernel": ("weight", (1, 0)), "bias": ("bias", None)}),         # (D, K) -> (K, D)
    BatchNormalization: ((nn.BatchNorm1d, nn.BatchNorm2d), {"gamma": ("weight", None), "beta": ("bias", None)}),
}


# ============================================================================ the optimizers, in Keras's form
class KerasOptimizer(torch.optim.Optimizer):
    """minicnn's ``SGD``, ``RMSprop`` or ``Adam`` update (see ``minicnn.optimizers``) on PyTorch tensors.

    ``torch.optim.Adam`` adds its epsilon to ``sqrt(v_hat)``, Keras and minicnn to ``sqrt(v)`` with the
    bias corrections folded into the rate; ``torch.optim.RMSprop`` adds it outside the square root and
    ``torch.optim.SGD`` keeps its momentum buffer before the learning rate. Each form is a different
    trajectory, so this class repeats minicnn's lines instead. State per parameter: minicnn's slots
    (``m``, ``v``; ``momentum``; ``velocity``, ``momentum``) in PyTorch's layout; ``t`` counts from 1.
    """

    def __init__(self, params, spec):
        self.spec = spec                                   # the minicnn optimizer: its settings and schedule
        super().__init__(params, {"lr": 0.0})

    def clip_(self, grads):
        """``Optimizer._clip`` of minicnn: by value, then each tensor's norm, then the global norm."""
        spec = self.spec
        if spec.clipvalue is not None:
            for g in grads:
                g.clamp_(-spec.clipvalue, spec.clipvalue)
        if spec.clipnorm is not None:
            for g in grads:
                g.mul_(min(1.0, spec.clipnorm / max(float(torch.linalg.vector_norm(g)), 1e-30)))
        if spec.global_clipnorm is not None:
            norm = math.sqrt(sum(float(torch.sum(g.double() ** 2)) for g in grads))
            if norm > spec.global_clipnorm:
                for g in grads:
                    g.mul_(spec.global_clipnorm / norm)

    @torch.no_grad()
    def step(self, lr, t):
        """One update of every parameter with learning rate ``lr`` at step ``t`` (from 1)."""
        params = [p for group in self.param_groups for p in group["params"]]
        grads = [p.grad for p in params]
        self.clip_(grads)
        spec = self.spec
        for w, g in zip(params, grads):
            state = self.state[w]
            for name in spec.slot_names:
                if name not in state:
                    state[name] = torch.zeros_like(w)
            if isinstance(spec, optimizers.Adam):
                m, v = state["m"], state["v"]
                m.add_((g - m) * (1 - spec.beta_1))
                v.add_((g * g - v) * (1 - spec.beta_2))
                alpha = lr * math.sqrt(1 - spec.beta_2**t) / (1 - spec.beta_1**t)
                w.sub_(alpha * m / (torch.sqrt(v) + spec.epsilon))
            elif isinstance(spec, optimizers.RMSprop):
                v = state["velocity"]
                v.mul_(spec.rho).add_((1 - spec.rho) * g * g)
                update = lr * g / torch.sqrt(v + spec.epsilon)
                if spec.momentum > 0:
                    update = state["momentum"].mul_(spec.momentum).add_(update)
                w.sub_(update)
            elif spec.momentum == 0:                       # SGD
                w.sub_(lr * g)
            else:
                v = state["momentum"]
                v.mul_(spec.momentum).sub_(lr * g)
                w.add_(spec.momentum * v - lr * g if spec.nesterov else v)


# ============================================================================ BatchNorm with minicnn's moving variance
class _KerasBatchNorm:
    """Mixin: normalise as ``nn.BatchNorm`` does, but update ``running_var`` with the *biased* batch variance.

    PyTorch keeps ``running_var`` with the unbiased variance (``M / (M - 1)`` larger); minicnn and Keras
    use the biased one, which is also what the normalisation itself uses.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        axes = [0] + list(range(2, x.dim()))
        y = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)   # batch statistics
        if x.shape[0]:                                     # an empty share leaves the averages alone
            with torch.no_grad():
                m = self.momentum                          # = 1 - minicnn's momentum
                self.running_mean.mul_(1 - m).add_(m * x.mean(axes))
                self.running_var.mul_(1 - m).add_(m * x.var(axes, unbiased=False))
        return y


class KerasBatchNorm1d(_KerasBatchNorm, nn.BatchNorm1d):
    pass


class KerasBatchNorm2d(_KerasBatchNorm, nn.BatchNorm2d):
    pass


def _keras_batchnorm(net):
    """Swap every BatchNorm module of ``net`` for the Keras-variance one, weights and flags kept."""
    for i, module in enumerate(net):
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            cls = KerasBatchNorm2d if isinstance(module, nn.BatchNorm2d) else KerasBatchNorm1d
            new = cls(module.num_features, eps=module.eps, momentum=module.momentum,
                      dtype=module.weight.dtype, device=module.weight.device)
            new.load_state_dict(module.state_dict())
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
            net[i] = new
    return net


# ============================================================================ the model and its loss
def split_model(model, split):
    """``(prefix, rest)``: the first ``split`` layers (run by minicnn) and a Sequential of the others (PyTorch)."""
    layers = model.layers
    shape = model._shapes(model.input_shape, layers[:split])[-1]
    rest = Sequential([Input(shape=shape[1:], dtype=layers[split].dtype)] + layers[split:], name=model.name)
    return layers[:split], rest


def torch_network(rest):
    """``to_torch(rest)`` in training mode (augmentation is run by minicnn before it, so nothing is left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_torch(rest).train()


def parameter_table(rest, net):
    """``[(key, tensor, axes, layer)]`` for every weight in ``params``: minicnn's ``"layer/param"``, the
    PyTorch tensor holding it, the permutation from Keras's layout to PyTorch's (None: the same), the layer.
    The tensors of frozen layers get ``requires_grad=False``."""
    owners = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d))]
    layers = [layer for layer in rest.layers if layer.params]
    table = []
    for layer, module in zip(layers, owners, strict=True):
        torch_type, names = PARAMETERS[type(layer)]
        assert isinstance(module, torch_type), (layer.name, module)
        for name in layer.params:
            attr, axes = names[name]
            tensor = getattr(module, attr)
            tensor.requires_grad_(bool(rest.trainable and layer.trainable))
            table.append((f"{layer.name}/{name}", tensor, axes, layer))
    return table


def penalty(table):
    """The layers' ``kernel_regularizer`` penalties, ``l1 * sum|w| + l2 * sum w**2``, on the PyTorch kernels."""
    total = 0.0
    for key, tensor, _, layer in table:
        reg = getattr(layer, "kernel_regularizer", None)
        if reg is not None and key.endswith("/kernel"):
            total = total + reg.l1 * tensor.abs().sum() + reg.l2 * (tensor * tensor).sum()
    return total


def loss_terms(loss, fused):
    """``f(out, y) -> sum_n L_n`` whose gradient is the one minicnn's ``backward`` takes.

    ``fused``: ``out`` holds the logits of the final softmax/sigmoid, and the gradient is the fused
    ``(p - y) / N`` (``Loss.logits_gradient``); otherwise the loss is written on the outputs as minicnn's
    ``per_sample`` does (probabilities clipped to ``[1e-7, 1 - 1e-7]``, no gradient where clipped).
    """
    eps = losses.EPSILON
    logits = fused or loss.from_logits
    if isinstance(loss, losses.SparseCategoricalCrossentropy):
        if logits:
            return lambda z, y: F.cross_entropy(z, y.long().reshape(-1), reduction="sum")
        return lambda p, y: -torch.log(torch.clamp(
            p / p.sum(1, keepdim=True), eps, 1 - eps)).gather(1, y.long().reshape(-1, 1)).sum()
    if isinstance(loss, losses.CategoricalCrossentropy):
        if logits:
            return lambda z, y: -(y * F.log_softmax(z, dim=1)).sum()
        return lambda p, y: -(y * torch.log(torch.clamp(p / p.sum(1, keepdim=True), eps, 1 - eps))).sum()
    if isinstance(loss, losses.BinaryCrossentropy):
        if logits:
            return lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="sum") / z.shape[1]
        return lambda p, y: -(y * torch.log(torch.clamp(p, eps, 1 - eps))
                              + (1 - y) * torch.log(torch.clamp(1 - p, eps, 1 - eps))).sum() / p.shape[1]
    return lambda p, y: ((p - y) ** 2).sum() / p.shape[1]                       # MeanSquaredError


# ============================================================================ the process
def run(rank, plan_path, queue):
    """Entry point of process ``rank``: train, then (rank 0) write the result next to ``plan_path``.

    ``plan_path``: the pickled plan the parent wrote into its private run folder. Any exception is sent
    to the parent as one line plus its traceback; the parent stops every process.
    """
    log = open(os.path.join(os.path.dirname(plan_path), f"rank{rank}.log"), "w")
    os.dup2(log.fileno(), 1)                               # C++ warnings of gloo/NCCL too: the parent keeps
    os.dup2(log.fileno(), 2)                               # the terminal for its one progress bar
    try:
        with open(plan_path, "rb") as f:
            plan = pickle.load(f)
        process = Process(rank, plan, queue)
        for e, epoch in enumerate(range(plan["initial_epoch"], plan["epochs"])):
            logs = process.train_epoch(e)
            if process.has_validation:
                logs.update({"val_" + k: v for k, v in process.evaluate().items()})
            if rank == 0:
                queue.put(("epoch", epoch, dict(sorted(logs.items()))))
        if rank == 0:
            process.write_result()
        dist.barrier()          # no process tears down while a peer may still talk to it
        dist.destroy_process_group()
        if rank == 0:
            queue.put(("done", 0, None))
    except BaseException as err:
        queue.put(("error", rank, f"{type(err).__name__}: {err}", traceback.format_exc()))
        log.flush()
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Leave without the interpreter's shutdown (atexit handlers, native threads of PyTorch, gloo and Numba):
    # once, in a clean CI run, a process died with SIGABRT after its work was done, failing a finished run.
    # Everything this process owes the parent is in the result file and the queue, flushed first.
    queue.close()
    queue.join_thread()
    log.flush()
    os._exit(0)


class Process:
    """One process's copy of the model (minicnn's augmentation in front, the PyTorch network behind),
    its optimizer, and its view of the data (memory-mapped ``.npy`` files the parent wrote)."""

    def __init__(self, rank, plan, queue):
        self.rank, self.plan, self.queue = rank, plan, queue
        self.world, cuda = plan["world"], plan["device"] == "cuda"
        config.set_backend(plan["backend"])
        config.set_floatx(plan["dtype"])                   # layers made without `dtype=` take the model's
        config.set_seed([plan["seed"], rank])              # augmentation layers made below draw from it
        torch.manual_seed(plan["seed"] + rank)             # Dropout masks
        torch.set_num_threads(plan["threads"])
        # a kernel with one input channel gets its gradient with stride 1 on that size-1 axis, which DDP's
        # literal stride comparison reports; the memory order is the same, nothing is copied or slowed
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        self.device = torch.device(f"cuda:{rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        else:                                              # gloo picks the interface the host name resolves to:
            loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]   # keep it on 127.0.0.1
            if loopback and "GLOO_SOCKET_IFNAME" not in os.environ:
                os.environ["GLOO_SOCKET_IFNAME"] = loopback[0]
        dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{plan['port']}",
                                rank=rank, world_size=self.world, timeout=timedelta(seconds=plan["timeout"]))

        model = Sequential.from_config(plan["config"])
        model.set_weights(plan["weights"])
        self.prefix, rest = split_model(model, plan["split"])
        self.input_shape = rest.input_shape[1:]
        self.net = _keras_batchnorm(torch_network(rest)).to(self.device)
        self.loss, self.metrics, spec = plan["loss"], plan["metrics"], plan["optimizer"]
        last = rest.layers[-1]
        self.fused = self.loss.fuses_with is not None and not self.loss.from_logits \
            and last.activation is not None and last.activation.name == self.loss.fuses_with
        self.train_net = self.net[:-1] if self.fused else self.net   # the final Softmax/Sigmoid goes into the loss
        self.sum_loss = loss_terms(self.loss, self.fused)
        self.penalized = parameter_table(rest, self.net)  # frozen kernels still add their penalty to the loss
        self.table = [entry for entry in self.penalized if entry[1].requires_grad]
        self.optimizer = KerasOptimizer([p for _, p, _, _ in self.table], spec)
        for key, p, axes, _ in self.table:                 # resume minicnn's slots, in PyTorch's layout
            for name, array in spec.slots.get(key, {}).items():
                self.optimizer.state[p][name] = torch.from_numpy(np.ascontiguousarray(
                    array if axes is None else array.transpose(axes))).to(self.device)
        self.ddp = nn.parallel.DistributedDataParallel(self.train_net, device_ids=[rank] if cuda else None)

        files = {name: os.path.join(plan["dir"], name + ".npy") for name in ("x", "y", "order", "x_val", "y_val")}
        self.data = {name: np.load(path, mmap_mode="r") for name, path in files.items() if os.path.exists(path)}
        self.has_validation = "x_val" in self.data
        self.dtype = np.dtype(plan["dtype"])

    # ------------------------------------------------------------------------ arrays in, arrays out
    def tensor(self, a):
        """A PyTorch copy of ``a`` on the device; images NHWC -> NCHW, in PyTorch's contiguous layout (a
        permuted view would make the kernel gradients channels-last, unlike the parameters DDP bucketed)."""
        t = torch.tensor(np.asarray(a), dtype=getattr(torch, self.dtype.name))
        return (t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t).to(self.device)

    def inputs(self, xb, training):
        """The PyTorch network's input: ``xb`` through minicnn's leading (augmentation) layers."""
        if len(xb) == 0:                                   # an empty share at the end of an epoch
            return self.tensor(np.zeros((0, *self.input_shape)))
        xb = np.asarray(xb, dtype=self.dtype)
        for layer in self.prefix:
            xb = layer.forward(xb, training=training)
        return self.tensor(xb)

    def outputs(self, z):
        """minicnn's outputs as NumPy (the fused activation applied to the logits ``z``), for the logs."""
        if self.fused:
            z = torch.softmax(z, dim=1) if self.loss.fuses_with == "softmax" else torch.sigmoid(z)
        return z.detach().cpu().numpy()

    def share_sums(self, y, out):
        """``{name: value * n}`` on this share of ``n`` samples, with minicnn's own loss and metric functions."""
        if len(y) == 0:
            return {"loss": 0.0, **{name: 0.0 for name, _ in self.metrics}}
        sums = {"loss": float(np.sum(self.loss.per_sample(y, out)))}
        return {**sums, **{name: fn(y, out) * len(y) for name, fn in self.metrics}}

    def reduce(self, sums, n, penalty_value):
        """The batch's logs from every process's share sums: one all_reduce of a few numbers."""
        names = sorted(sums)
        t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        logs = {k: float(v) / n for k, v in zip(names, t.tolist())}
        logs["loss"] += penalty_value
        return logs

    # ------------------------------------------------------------------------ training and evaluation
    def train_epoch(self, e):
        """Epoch ``e`` of the run (its order is row ``e`` of ``order.npy``); the epoch's logs."""
        x, y, B, spec = self.data["x"], self.data["y"], self.plan["batch_size"], self.optimizer.spec
        order = self.data["order"][e] if "order" in self.data else np.arange(len(x))
        self.net.train()
        totals, count = {}, 0
        for step in range(math.ceil(len(x) / B)):
            batch = order[step * B : (step + 1) * B]
            share = np.array_split(batch, self.world)[self.rank]
            yb = np.asarray(y[share])
            z = self.ddp(self.inputs(x[share], True))
            reg = penalty(self.penalized)
            self.optimizer.zero_grad(set_to_none=False)
            (self.sum_loss(z, self.tensor(yb)) * (self.world / len(batch)) + reg).backward()
            self.optimizer.step(spec.learning_rate, spec.iterations + 1)   # the rate (or schedule) at this step
            spec.iterations += 1
            logs = self.reduce(self.share_sums(yb, self.outputs(z)), len(batch), float(reg))
            count += len(batch)
            for k, v in logs.items():                      # running means over the epoch, weighted by batch size
                totals[k] = totals.get(k, 0.0) + v * len(batch)
            if self.rank == 0:
                self.queue.put(("batch", step, {k: v / count for k, v in sorted(totals.items())}))
        return {k: v / count for k, v in sorted(totals.items())}

    @torch.no_grad()
    def evaluate(self):
        """Validation logs in inference mode; each process takes its share of every batch."""
        self.train_net.eval()
        x, y, B = self.data["x_val"], self.data["y_val"], self.plan["batch_size"]
        totals = {}
        for start in range(0, len(x), B):
            share = np.array_split(np.arange(start, min(start + B, len(x))), self.world)[self.rank]
            yb = np.asarray(y[share])
            out = self.outputs(self.train_net(self.inputs(x[share], False))) if len(share) else None
            for k, v in self.share_sums(yb, out).items():
                totals[k] = totals.get(k, 0.0) + v
        self.train_net.train()
        return self.reduce(totals, len(x), float(penalty(self.penalized)))

    @torch.no_grad()
    def write_result(self):
        """Rank 0: the trained weights (``state_dict``), the optimizer's step count and slots in minicnn's
        layout, and PyTorch's outputs for the first ``plan['probe']`` validation (else training) samples."""
        self.net.eval()
        arrays = {"state:" + k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        for key, p, axes, _ in self.table:
            for name, value in self.optimizer.state[p].items():
                value = value.cpu().numpy()
                arrays[f"slot:{key}:{name}"] = value if axes is None else value.transpose(np.argsort(axes))
        x = self.data.get("x_val", self.data["x"])
        arrays["predictions"] = self.net(self.inputs(x[: self.plan["probe"]], False)).cpu().numpy()
        arrays["iterations"] = np.array(self.optimizer.spec.iterations)
        np.savez(os.path.join(self.plan["dir"], "result.npz"), **arrays)
