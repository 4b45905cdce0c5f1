"""Ready-made models: the blog's CNN and a small two-block CNN.

Both start with ``Rescaling(1/255)`` so they take raw uint8 pixels, and the saved model carries its
own preprocessing: ``minicnn predict model.npz photo.png`` needs nothing else.
"""

from .layers import Conv2D, Dense, Flatten, Input, MaxPooling2D
from .layers.preprocessing import RandomFlip, RandomTranslation, Rescaling


def _preprocessing(input_shape, augment):
    layers = [Input(shape=input_shape), Rescaling(1.0 / 255)]
    if augment:
        # Mild augmentation that keeps Fashion-MNIST/CIFAR labels true: mirror images, small shifts.
        layers += [RandomFlip("horizontal"), RandomTranslation(0.1, 0.1, fill_mode="constant")]
    return layers


def blog_cnn(input_shape=(28, 28, 1), num_classes=10, augment=False):
    """The blog's model: Conv2D(32, 3x3, relu) -> MaxPool 2 -> Flatten -> Dense(128, relu) -> Dense(softmax)."""
    from .models import Sequential

    return Sequential(
        _preprocessing(input_shape, augment)
        + [
            Conv2D(32, (3, 3), activation="relu"),
            MaxPooling2D(pool_size=(2, 2)),
            Flatten(),
            Dense(units=128, activation="relu"),
            Dense(units=num_classes, activation="softmax"),
        ],
        name="blog_cnn",
    )


def small_cnn(input_shape=(28, 28, 1), num_classes=10, augment=False):
    """Two conv blocks: Conv(32) -> Pool -> Conv(64) -> Pool -> Flatten -> Dense(128) -> Dense(softmax).

    A third of the blog model's weights at 28x28 (225k vs 694k). In notebook 05 both reach about 90%
    on Fashion-MNIST after 3 epochs; trained longer, the blog's model memorises (its validation loss
    climbs back) while this one's stays flat.
    """
    from .models import Sequential

    return Sequential(
        _preprocessing(input_shape, augment)
        + [
            Conv2D(32, (3, 3), activation="relu"),
            MaxPooling2D((2, 2)),
            Conv2D(64, (3, 3), activation="relu"),
            MaxPooling2D((2, 2)),
            Flatten(),
            Dense(128, activation="relu"),
            Dense(num_classes, activation="softmax"),
        ],
        name="small_cnn",
    )


MODELS = {"seed": blog_cnn, "blog": blog_cnn, "small": small_cnn}
