"""Keras's progress bar (``keras.utils.Progbar``): the line ``fit`` draws while it trains.

``ProgbarLogger`` (in ``minicnn.callbacks``) drives it from the training loop; the bar itself knows
nothing about models: it is told the step count and the logs, and draws them where they are
shown (a terminal, a notebook cell, a log file).
"""

import math
import sys
import time


def format_value(v):
    """A logged number as Keras prints it: four decimals, or scientific notation below 1e-3."""
    v = float(v)
    return f"{v:.4f}" if abs(v) > 1e-3 else f"{v:.4e}"


def format_duration(seconds):
    """ETA as Keras prints it: ``7s``, ``1:05`` or ``1:02:03``."""
    seconds = int(seconds)
    if seconds > 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    if seconds > 60:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds}s"


def format_per_step(seconds, unit="step"):
    """Time per step as Keras prints it: ``2s/step``, ``2ms/step`` or ``30us/step``."""
    if seconds >= 1 or seconds == 0:
        return f"{seconds:.0f}s/{unit}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.0f}ms/{unit}"
    return f"{seconds * 1e6:.0f}us/{unit}"


def output_kind(stream):
    """``"jupyter"`` (a notebook cell's own stream, not any stream of a kernel), ``"terminal"`` or ``"log"``."""
    if type(stream).__module__.split(".")[0] == "ipykernel":
        return "jupyter"
    return "terminal" if hasattr(stream, "isatty") and stream.isatty() else "log"


class Progbar:
    """Keras's progress bar: ``1875/1875 ━━━━━━━━━━━━━━━━━━━━ 3s 1ms/step - loss: 0.4321``.

    verbose=1 draws the line where it is shown, at most every ``interval`` seconds:

    - on a terminal, Keras's look: the line is redrawn in place (``\\r``), the bar in colour;
    - in a Jupyter notebook, one plain-text display per bar (with the ``header``, e.g.
      ``Epoch 2/5``, above it) that is updated in place, so a stored notebook keeps one output
      per epoch, not one per redraw, and no terminal colour codes;
    - anywhere else (a log file, CI) only the final line, so logs stay clean.

    verbose=2 prints one line at the end: ``1875/1875 - 3s - 1ms/step - loss: 0.4321``.
    The time per step leaves out the first step, which includes one-off costs (JIT compilation).
    """

    width = 20

    def __init__(self, target, verbose=1, interval=0.05, unit_name="step", stream=None, header=None):
        self.target = target
        self.header = header
        self.verbose = verbose
        self.interval = interval
        self.unit_name = unit_name
        self._stream = stream
        self._start = time.perf_counter()
        self._last_update = 0.0
        self._after_first_step = None
        self._prev_width = 0
        self._kind = output_kind(self.stream)
        self._display = None  # the notebook display this bar updates (Jupyter only)
        if self.header and (verbose == 2 or (verbose == 1 and self._kind != "jupyter")):
            self.stream.write(self.header + "\n")

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _time_per_step(self, current, now):
        if not current:
            return 0.0
        if self._after_first_step is not None and current > 1:
            per_step = (now - self._after_first_step) / (current - 1)
        else:
            per_step = (now - self._start) / current
        if current == 1:
            self._after_first_step = now
        return per_step

    def update(self, current, values=None, finalize=None):
        """Show ``current`` steps done and ``values`` (a dict or list of (name, value) pairs)."""
        if finalize is None:
            finalize = self.target is not None and current >= self.target
        values = list(values.items()) if isinstance(values, dict) else list(values or [])
        now = time.perf_counter()
        per_step = self._time_per_step(current, now)
        if self.verbose == 1:
            if not finalize and (self._kind == "log" or now - self._last_update < self.interval):
                return
            self._last_update = now
            line = self._line(current, values, per_step, now, finalize)
            if self._kind == "jupyter":
                self._show_in_notebook(line)
                return
            if self._kind == "terminal":
                pad = " " * max(self._prev_width - len(line), 0)
                colored = line.replace(self._bar_text, self._colored_bar, 1) if self._bar_text else line
                self.stream.write("\r" + colored + pad + ("\n" if finalize else ""))
                self._prev_width = len(line)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()
        elif self.verbose == 2 and finalize:
            count = f"{current}/{self.target}" if self.target is not None else f"{current}"
            metrics = "".join(f" - {k}: {format_value(v)}" for k, v in values)
            self.stream.write(f"{count} - {now - self._start:.0f}s - {format_per_step(per_step, self.unit_name)}{metrics}\n")
            self.stream.flush()

    def _show_in_notebook(self, line):
        from IPython.display import display  # only reached inside an IPython kernel

        text = {"text/plain": f"{self.header}\n{line}" if self.header else line}
        if self._display is None:
            self.stream.flush()  # text printed before the bar stays above it
            self._display = display(text, raw=True, display_id=True)
        else:
            self._display.update(text, raw=True)

    def _line(self, current, values, per_step, now, finalize):
        self._bar_text = self._colored_bar = ""
        if self.target is not None:
            digits = int(math.log10(max(self.target, 1))) + 1
            done = int(self.width * min(current / self.target, 1.0)) if self.target else self.width
            self._bar_text = "━" * self.width
            self._colored_bar = f"\x1b[32m{'━' * done}\x1b[0m\x1b[37m{'━' * (self.width - done)}\x1b[0m"
            head = f"{current:>{digits}}/{self.target} {self._bar_text}"
        else:
            head = f"{current:7d}/Unknown"
        if self.target is not None and not finalize:
            when = format_duration(per_step * (self.target - current))
        else:
            when = f"{now - self._start:.0f}s"
        metrics = "".join(f" - {k}: {format_value(v)}" for k, v in values)
        return f"{head} {when} {format_per_step(per_step, self.unit_name)}{metrics}"
