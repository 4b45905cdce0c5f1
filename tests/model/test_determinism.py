"""The same seed gives the same bits whatever the thread count.

The Numba kernels split their work into a fixed number of parts (``minicnn.kernels.numba.PARTS``) chosen from
the shapes alone, and add the parts' partial sums in part order; how many threads run the parts
must not change a single bit. Each run trains in a process of its own, because
``NUMBA_NUM_THREADS`` is read once, when Numba starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

ROOT = Path(__file__).resolve().parents[2]

# Every route that sums across parts: the im2col and register-tile conv backward (3 and 32
# filters), a Dense with a long input (its forward is split along D), max-pooling, BatchNorm,
# Dropout, Adam; batches large enough for the lanes to run side by side (see LANE_MIN_WORK).
TRAIN = """
import sys
import numpy as np
import minicnn
from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from minicnn.models import Sequential
from minicnn.utils import set_random_seed

minicnn.set_backend("numba")
minicnn.set_floatx("float32")
set_random_seed(3)
rng = np.random.default_rng(3)
x = rng.random((96, 20, 20, 3), dtype=np.float32)
y = rng.integers(0, 5, 96)
model = Sequential([Input(shape=(20, 20, 3)), Conv2D(8, 3, padding="same", activation="relu"),
                    Conv2D(32, 3, activation="relu"), MaxPooling2D(2), BatchNormalization(),
                    Flatten(), Dropout(0.2), Dense(16, activation="relu"), Dense(5, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, batch_size=48, epochs=2, shuffle=True, verbose=0)
np.savez(sys.argv[1], *model.get_weights())
"""

def train_with_threads(threads, out):
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TRAIN, str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"training with NUMBA_NUM_THREADS={threads} failed:\n{done.stderr[-3000:]}"
    with np.load(out) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def test_training_gives_the_same_bits_on_1_2_and_3_threads(tmp_path):
    runs = {t: train_with_threads(t, tmp_path / f"w{t}.npz") for t in (1, 2, 3)}
    for threads in (2, 3):
        assert len(runs[threads]) == len(runs[1])
        for i, (a, b) in enumerate(zip(runs[1], runs[threads])):
            diff = np.abs(a.astype(np.float64) - b).max() if a.size else 0.0
            assert np.array_equal(a, b), f"weight {i} differs between 1 and {threads} threads (max {diff:.3g})"
