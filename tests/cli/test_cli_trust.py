"""What `minicnn` prints can be trusted: a reproducible `train`, and `predict` warning about unusual images."""

import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from minicnn import cli
from minicnn.datasets import fashion_mnist

ANKLE_BOOT = 9
README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def accuracy_line(out):
    return re.search(r"Test accuracy: [0-9.]+", out).group(0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """`minicnn train` with no --seed (1 epoch of the blog's model), shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--model", "seed", "--epochs", "1", "--out", str(out)]) == 0
    return out / "model.npz"


def test_train_has_a_fixed_default_seed(model_file, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["train", "--model", "seed", "--epochs", "1", "--out", str(tmp_path / "a")]) == 0
    first = accuracy_line(capsys.readouterr().out)
    assert cli.main(["train", "--model", "seed", "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert accuracy_line(capsys.readouterr().out) == first
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--seed SEED seeds the weights, .* \(default: 0\)", help_text)


def save_png(array, path):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


def test_real_test_images_give_no_warning(model_file, tmp_path, capsys):
    (_, _), (x_test, _) = fashion_mnist.load_data(sample=True)
    paths = [save_png(x_test[i], tmp_path / f"real{i}.png") for i in range(20)]
    capsys.readouterr()
    assert cli.main(["predict", str(model_file), *paths]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and len(captured.out.strip().splitlines()) == 20


def test_a_dark_shoe_on_white_warns_and_invert_reads_it_as_the_original(model_file, tmp_path, capsys):
    (_, _), (x_test, y_test) = fashion_mnist.load_data(sample=True)
    i = int(np.flatnonzero(y_test == ANKLE_BOOT)[0])
    photo = save_png(255 - x_test[i], tmp_path / "dark_shoe_on_white.png")   # what a product photo looks like
    original = save_png(x_test[i], tmp_path / "original.png")
    capsys.readouterr()
    assert cli.main(["predict", str(model_file), photo]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"minicnn: warning: {photo}: unlike the training images: its border is ")
    assert "try --invert" in err and err.count("\n") == 1
    # the README shows this very warning
    readme_line = next(line for line in README.read_text().splitlines() if line.startswith("minicnn: warning: shoe.png"))
    assert err.strip().replace(photo, "shoe.png") == readme_line
    assert cli.main(["predict", str(model_file), photo, "--invert"]) == 0
    inverted = capsys.readouterr()
    assert inverted.err == ""
    assert cli.main(["predict", str(model_file), original]) == 0
    plain = capsys.readouterr().out
    assert inverted.out.split(": ", 1)[1] == plain.split(": ", 1)[1]   # the same probabilities
