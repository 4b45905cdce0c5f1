"""The summary table: ``model.summary()`` as Keras 3 prints it (rich's box characters, exact widths).

Below the table: the parameter counts and their size in memory, trainable, frozen (e.g. batch
norm's moving statistics) and the optimizer's slots, each as Keras counts them.
"""

import shutil
import textwrap


def readable_size(num_bytes):
    """``2.65 MB``: 1024 steps, two decimals (Keras's ``readable_memory_size``)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if num_bytes / 1024 < 1:
            return f"{num_bytes:.2f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.2f} PB"


def _shrink(widths, excess):
    """Take ``excess`` characters off the columns evenly, as rich's ``ratio_reduce`` (Keras renders with rich)."""
    out, remaining, parts = [], excess, len(widths)
    for w in widths:
        cut = min(w, round(remaining / parts))
        out.append(w - cut)
        remaining -= cut
        parts -= 1
    return out


def summary_text(model, line_length=None, positions=None):
    """The text ``model.summary()`` prints: Keras's table of layers, output shapes and parameter counts.

    Parameters
    ----------
    model : Sequential
    line_length : int, optional
        The table's width; default 88 characters, or the terminal width minus 4 if that is smaller.
    positions : list of float, optional
        Where each column ends, as fractions of ``line_length``; default ``[0.45, 0.80, 1.0]``.
    """
    if line_length is None:
        line_length = min(88, shutil.get_terminal_size().columns - 4)
    positions = positions or [0.45, 0.80, 1.0]
    bounds = [int(p * line_length) for p in positions]
    widths = [b - a for a, b in zip([0] + bounds[:-1], bounds)]
    # Each cell has one space of padding on both sides and the table has len + 1 borders;
    # the columns give up the excess so the table is exactly line_length wide.
    inner = _shrink([w + 2 for w in widths], sum(widths) + 2 * len(widths) - (line_length - len(widths) - 1))
    widths = [max(w - 2, 1) for w in inner]

    rows = []
    for layer in model.layers:
        if layer.built and layer.output_shape is not None:
            shape = "(" + ", ".join("None" if d is None else str(d) for d in layer.output_shape) + ")"
            params = f"{layer.count_params():,}"
        else:
            shape, params = "?", "0 (unbuilt)"
        rows.append([f"{layer.name} ({type(layer).__name__})", shape, params])

    def line(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(texts, bar):
        wrapped = [textwrap.wrap(t, w, break_long_words=True, break_on_hyphens=False) or [""]
                   for t, w in zip(texts, widths)]
        out = []
        for i in range(max(len(c) for c in wrapped)):
            parts = []
            for col, (c, w) in enumerate(zip(wrapped, widths)):
                text = c[i] if i < len(c) else ""
                parts.append(" " + (text.rjust(w) if col == 2 else text.ljust(w)) + " ")
            out.append(bar + bar.join(parts) + bar)
        return out

    lines = [f'Model: "{model.name}"', line("┏", "┳", "┓", "━")]
    lines += cells(["Layer (type)", "Output Shape", "Param #"], "┃")
    lines.append(line("┡", "╇", "┩", "━"))
    for i, row in enumerate(rows):
        if i:
            lines.append(line("├", "┼", "┤", "─"))
        lines += cells(row, "│")
    lines.append(line("└", "┴", "┘", "─"))

    def size(arrays):
        return sum(a.size for a in arrays), sum(a.nbytes for a in arrays)

    trainable, trainable_bytes = size(model.trainable_weights)
    frozen, frozen_bytes = size(model.non_trainable_weights)
    opt_count = opt_bytes = 0
    opt = model.optimizer
    if opt is not None and opt.built:
        slots = [a for s in opt.slots.values() for a in s.values()]
        # Keras also counts the step counter (int64) and the learning rate (float32) as variables.
        has_lr_variable = not callable(opt._learning_rate)
        opt_count = sum(a.size for a in slots) + 1 + has_lr_variable
        opt_bytes = sum(a.nbytes for a in slots) + 8 + 4 * has_lr_variable
    lines.append(f" Total params: {trainable + frozen + opt_count:,} "
                 f"({readable_size(trainable_bytes + frozen_bytes + opt_bytes)})")
    lines.append(f" Trainable params: {trainable:,} ({readable_size(trainable_bytes)})")
    lines.append(f" Non-trainable params: {frozen:,} ({readable_size(frozen_bytes)})")
    if opt is not None and opt.built:
        lines.append(f" Optimizer params: {opt_count:,} ({readable_size(opt_bytes)})")
    return "\n".join(lines)
