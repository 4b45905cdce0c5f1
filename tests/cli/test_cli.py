"""The `minicnn` command: train, evaluate, predict, info, gradcheck, and one-line errors."""

import argparse
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicnn import cli
from minicnn.datasets import fashion_mnist


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short `minicnn train` run shared by the tests below (1 epoch of the blog's model)."""
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", "--model", "seed", "--epochs", "1", "--seed", "3", "--out", str(out)]) == 0
    return out


def test_train_writes_model_and_pictures(trained, capsys):
    for name in ("model.npz", "history.png", "confusion_matrix.png"):
        assert (trained / name).stat().st_size > 1000
        if name.endswith(".png"):
            assert (trained / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_carries_class_names_and_preprocessing(trained, tmp_path, capsys):
    (_, _), (x_test, y_test) = fashion_mnist.load_data(sample=True)
    paths = []
    for i in range(4):   # raw uint8 pixels go in: the model holds its own Rescaling(1/255)
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(x_test[i]).save(paths[-1])
    assert cli.main(["predict", str(trained / "model.npz"), *paths, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for path, line in zip(paths, lines):
        assert line.startswith(path + ": ")
        names = [part.split(" (")[0] for part in line.split(": ", 1)[1].split(", ")]
        assert len(names) == 2 and all(n in fashion_mnist.CLASS_NAMES for n in names)
    right = sum(line.split(": ", 1)[1].startswith(fashion_mnist.CLASS_NAMES[y]) for line, y in zip(lines, y_test))
    assert right >= 2   # one epoch already gets most of these right


def test_evaluate_prints_accuracy_and_report(trained, capsys):
    assert cli.main(["evaluate", str(trained / "model.npz")]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("Test accuracy: ")[1].split()[0])
    assert 0.5 < accuracy <= 1.0
    assert "Ankle boot" in out and "macro avg" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["evaluate", "missing.npz"], "model file not found: missing.npz"),
        (["predict", "{model}", "missing.png"], "image not found: missing.png"),
        (["predict", "{model}", "{bad_image}"], "cannot read image"),
        (["evaluate", "{bad_image}"], "as a minicnn model"),
        (["train", "--dataset", "nowhere-data"], "unknown dataset 'nowhere-data'"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(trained, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.png"
    bad.write_text("this is not an image")
    argv = [a.format(model=trained / "model.npz", bad_image=bad) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("minicnn: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_python_dash_m_is_the_same_program_and_info_shows_the_cache():
    out = subprocess.run([sys.executable, "-m", "minicnn", "info"], capture_output=True, text=True, check=True).stdout
    assert "backend: numba" in out and "cache:" in out
    assert "sample" in out and "fashion-mnist" in out


def test_gradcheck_command_passes(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "all gradients agree" in out and out.count("kernel") >= 2


def test_train_streams_from_an_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, colour in (("dark", 40), ("light", 210)):
            folder = tmp_path / "pics" / split / label
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = np.clip(colour + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tmp_path / "pics"), "--epochs", "12", "--batch-size", "4", "--image-size", "16", "16",
            "--seed", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert float(text.split("Test accuracy: ")[1].split()[0]) >= 0.9   # dark vs light is easy
    assert cli.main(["predict", str(out / "model.npz"), str(tmp_path / "pics" / "test" / "light" / "1.png")]) == 0
    assert capsys.readouterr().out.split(": ")[1].startswith("light")


@pytest.mark.parametrize("validation_split, expected_steps", [(0.1, 3 * 3), (0.0, 4 * 3)])
def test_train_decays_the_learning_rate_to_zero_over_the_run(validation_split, expected_steps):
    # 100 images, batch 32: 90 fitted images are 3 steps per epoch (100 are 4); 3 epochs
    args = argparse.Namespace(validation_split=validation_split, batch_size=32, epochs=3)
    optimizer = cli._optimizer(args, (np.zeros((100, 2)), np.zeros(100)), streaming=False)
    schedule = optimizer._learning_rate
    steps = np.arange(expected_steps + 1)
    np.testing.assert_allclose([schedule(s) for s in steps], 0.5e-3 * (1 + np.cos(np.pi * steps / expected_steps)),
                               rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--batch-size", "0"], "--batch-size must be at least 1. Received: 0"),
        (["train", "--epochs", "0"], "--epochs must be at least 1. Received: 0"),
        (["train", "--seed", "-1"], "--seed must be at least 0"),
        (["train", "--validation-split", "1"], "--validation-split must be in [0, 1)"),
        (["train", "--validation-split", "nan"], "--validation-split must be in [0, 1)"),
        (["train", "--image-size", "0", "8"], "--image-size must be two positive integers"),
        (["train", "--model", "nowhere.npz"], "the model file is not found: nowhere.npz"),
        (["train", "--out", "{a_file}"], "is a file, not a folder"),
        (["train", "--out", "{a_file}/run"], "is not a writable folder"),
        (["train", "--out", "{model_dir_run}"], "model.npz is a folder"),
        (["predict", "{model}", "{image}", "--top-k", "0"], "--top-k must be at least 1. Received: 0"),
        (["evaluate", "{image}", "--dataset", "nowhere-data"], "unknown dataset 'nowhere-data'"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_printed_or_written(trained, tmp_path, capsys, argv, message):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    (tmp_path / "run2" / "model.npz").mkdir(parents=True)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    argv = [a.format(model=trained / "model.npz", image=image, a_file=a_file, model_dir_run=tmp_path / "run2") for a in argv]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""   # nothing printed, nothing trained
    assert captured.err.startswith("minicnn: error: ") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before   # nothing written


def test_a_model_whose_class_names_do_not_match_its_outputs_is_refused_in_one_line(trained, tmp_path, capsys):
    import json

    with np.load(trained / "model.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["__meta__"][()]))
    meta["class_names"] = meta["class_names"][:3]   # 10 outputs, 3 names
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "short.npz", **arrays)
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    assert cli.main(["predict", str(tmp_path / "short.npz"), str(image)]) == 1
    err = capsys.readouterr().err
    assert "class_names has 3 names but the model has 10 outputs" in err and err.count("\n") == 1


def test_a_folder_of_only_corrupt_images_is_one_line_and_writes_no_model(tmp_path, capsys):
    for label in ("a", "b"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "pics" / label / f"{i}.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    with pytest.warns(UserWarning):
        code = cli.main(["train", "--dataset", str(tmp_path / "pics"), "--epochs", "1", "--image-size", "16", "16",
                         "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "no training batch could be read" in err and err.count("\n") == 1
    assert not (out / "model.npz").exists()


def test_train_from_a_model_file_starts_a_fresh_schedule_and_changes_the_weights(trained, tmp_path, capsys):
    from minicnn.models import load_model

    start = load_model(trained / "model.npz")
    assert start.optimizer.learning_rate == pytest.approx(0, abs=1e-12)   # the saved cosine schedule is spent
    out = tmp_path / "again"
    assert cli.main(["train", "--model", str(trained / "model.npz"), "--epochs", "1", "--seed", "4",
                     "--out", str(out)]) == 0
    assert "fresh Adam optimizer" in capsys.readouterr().out
    again = load_model(out / "model.npz")
    changed = [not np.array_equal(a, b) for a, b in zip(start.get_weights(), again.get_weights())]
    assert all(changed), changed   # a spent schedule would have left every weight as it was
    assert again.optimizer.iterations < start.optimizer.iterations + 100   # a new optimizer: its own step count
