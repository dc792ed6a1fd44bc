"""The architecture registry: one build signature for every classifier.

Every builder has the signature ``build(image_size, num_classes, **params)``
and returns an uncompiled Keras model that takes raw ``0..255`` RGB pixels of
shape ``(image_size, image_size, 3)`` and outputs class probabilities. Each
model carries its own input normalisation, so a saved model folder needs no
code to preprocess its inputs. Adding an architecture is one function and
one line in :data:`ARCHITECTURES`.

Conventions every builder keeps (the training code relies on them):

- the last layer is a softmax ``Dense`` named ``"probabilities"``; its input
  is the penultimate feature vector (the *embedding* used for SMOTE);
- an ImageNet backbone is a nested model named after its key in
  :data:`BACKBONES` (``"resnet50"``, ``"xception"`` …), so that weights can be
  loaded into it and it can be frozen by name;
- only Keras layers and ``keras.ops`` are used, so a model saved as
  ``.keras`` reloads with no smearflow code on any backend.

Input normalisation follows the backbone's ImageNet convention:

``"caffe"`` (ResNet-50, VGG-16)
    RGB→BGR, then subtract the ImageNet mean per channel (a frozen 1×1
    convolution does both, exactly).
``"torch"`` (DenseNet-201)
    ``/255``, then subtract the ImageNet mean and divide by its std.
``"tf"`` (MobileNetV2, InceptionV3, Xception)
    ``/127.5 - 1``.
``"unit"`` (models trained from scratch)
    ``/255``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESSING_MODES = ("unit", "tf", "torch", "caffe")


@dataclass(frozen=True)
class Backbone:
    """An ImageNet backbone from ``keras.applications``.

    Attributes
    ----------
    application : str
        Name of the ``keras.applications`` function.
    preprocessing : str
        One of :data:`PREPROCESSING_MODES`.
    min_image_size : int
        Smallest input side the backbone accepts.
    weights_file : str
        File name of Keras' ImageNet "notop" weights (as cached in
        ``~/.keras/models``).
    """

    application: str
    preprocessing: str
    min_image_size: int
    weights_file: str


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone("ResNet50", "caffe", 32, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": Backbone("VGG16", "caffe", 32, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "densenet201": Backbone("DenseNet201", "torch", 32, "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "mobilenetv2": Backbone(
        "MobileNetV2", "tf", 32, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    ),
    "inceptionv3": Backbone("InceptionV3", "tf", 75, "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": Backbone("Xception", "tf", 71, "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
"""ImageNet backbones by the name their nested model carries."""

IMAGENET_WEIGHTS_KEY = "imagenet"
"""``weights={"imagenet": FOLDER}`` takes every backbone's standard file from FOLDER."""


@dataclass(frozen=True)
class Architecture:
    """A registered classifier.

    Attributes
    ----------
    name : str
    build : callable
        ``build(image_size, num_classes, **params)`` → uncompiled Keras model.
    min_image_size : int
        Smallest accepted input side in pixels.
    description : str
    preprocessing : str
        Input normalisation inside the model, one of :data:`PREPROCESSING_MODES`.
    backbones : tuple of str
        Keys of :data:`BACKBONES` nested in the model (ImageNet weights can be
        loaded into them). An architecture whose ``build`` takes an
        ``encoder`` parameter has that backbone instead (see
        :meth:`backbone_names`).
    contrastive : bool
        Trained in two stages: the encoder with a supervised contrastive loss
        on a projection head, then the softmax head on the frozen encoder.
    """

    name: str
    build: Callable
    min_image_size: int
    description: str
    preprocessing: str = "unit"
    backbones: tuple[str, ...] = ()
    contrastive: bool = False

    def backbone_names(self, params: Mapping | None = None) -> tuple[str, ...]:
        """The backbones a model built with ``params`` holds."""
        if params and "encoder" in params:
            return (str(params["encoder"]),)
        return self.backbones


# --------------------------------------------------------------------------- building blocks


def pixel_preprocessing(inputs, mode: str, name: str = "preprocessed"):
    """Normalise raw ``0..255`` RGB pixels inside the model.

    Parameters
    ----------
    inputs : KerasTensor of shape (batch, M, N, 3), float
        Raw RGB pixels in ``0..255``.
    mode : {"unit", "tf", "torch", "caffe"}
        The ImageNet convention of the backbone that follows (see the module
        docstring).
    name : str
        Name of the last preprocessing layer, so tests and tools can find its
        output.

    Returns
    -------
    KerasTensor of the same shape, float32

    Raises
    ------
    ValueError
        For an unknown ``mode``.
    """
    from keras import layers

    if mode == "unit":
        return layers.Rescaling(1.0 / 255.0, name=name)(inputs)
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)(inputs)
    if mode == "torch":
        x = layers.Rescaling(1.0 / 255.0, name=f"{name}_scale")(inputs)
        return layers.Normalization(
            mean=list(IMAGENET_MEAN_RGB), variance=[s**2 for s in IMAGENET_STD_RGB], name=name
        )(x)
    if mode == "caffe":
        # A frozen 1x1 convolution: output channel c is input channel 2 - c minus
        # the BGR mean. Standard layer, so the saved model needs no custom code.
        conv = layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name)
        outputs = conv(inputs)
        kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for c in range(3):
            kernel[0, 0, 2 - c, c] = 1.0
        conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)])
        return outputs
    raise ValueError(f"mode must be one of {list(PREPROCESSING_MODES)}. Received: mode={mode!r}")


def build_backbone(name: str, image_size: int):
    """An ImageNet backbone without its top, random weights, named ``name``.

    Raises
    ------
    ValueError
        For an unknown backbone or an input below its minimum size.
    """
    import keras

    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Known: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[name]
    if image_size < spec.min_image_size:
        raise ValueError(
            f"backbone {name} needs image_size >= {spec.min_image_size}. Received: image_size={image_size}"
        )
    factory = getattr(keras.applications, spec.application)
    return factory(include_top=False, weights=None, input_shape=(image_size, image_size, 3), name=name)


def _softmax_head(x, num_classes: int):
    from keras import layers

    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def _backbone_classifier(backbone_name: str, image_size: int, num_classes: int, dropout: float):
    """Preprocessing → backbone → global average pooling → dropout → softmax."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = pixel_preprocessing(inputs, BACKBONES[backbone_name].preprocessing)
    x = build_backbone(backbone_name, image_size)(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name=f"{backbone_name}_classifier")


# --------------------------------------------------------------------------- builders


def build_cnn(
    image_size: int,
    num_classes: int,
    *,
    filters: tuple[int, ...] = (32, 64, 128, 192, 256),
    dropout: float = 0.3,
):
    """A plain convolutional baseline: blocks of two 3×3 conv + batch norm + ReLU.

    Every block but the last halves the resolution; the last is pooled
    globally, then dropout and a softmax layer.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for block, n_filters in enumerate(filters):
        for conv in range(2):
            x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu")(x)
        if block < len(filters) - 1:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def build_unet_encoder(
    image_size: int,
    num_classes: int,
    *,
    filters: tuple[int, ...] = (64, 128, 256, 512, 1024),
    batch_norm: bool = True,
    dropout: float = 0.5,
):
    """A classifier on the contracting path of a U-Net (Ronneberger et al. 2015).

    Each stage is two 3×3 convolutions (He-normal, ReLU; batch norm unless
    ``batch_norm=False``); all stages but the last are followed by 2×2 max
    pooling. As in the original network, dropout precedes the last pooling
    and follows the bottleneck; the bottleneck is pooled globally into a
    softmax layer. The widths are the original U-Net's.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = pixel_preprocessing(inputs, "unit")
    for stage, n_filters in enumerate(filters):
        for conv in range(2):
            x = layers.Conv2D(
                n_filters,
                3,
                padding="same",
                use_bias=not batch_norm,
                kernel_initializer="he_normal",
                name=f"encoder{stage}_conv{conv}",
            )(x)
            if batch_norm:
                x = layers.BatchNormalization(name=f"encoder{stage}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"encoder{stage}_relu{conv}")(x)
        if stage >= len(filters) - 2:
            x = layers.Dropout(dropout, name=f"encoder{stage}_dropout")(x)
        if stage < len(filters) - 1:
            x = layers.MaxPooling2D(name=f"encoder{stage}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="unet_encoder")


def build_resnet50(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """ResNet-50 (caffe preprocessing) with a pooled softmax head."""
    return _backbone_classifier("resnet50", image_size, num_classes, dropout)


def build_vgg16(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """VGG-16 convolutional base (caffe preprocessing) with a pooled softmax head."""
    return _backbone_classifier("vgg16", image_size, num_classes, dropout)


def build_densenet201(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """DenseNet-201 (torch preprocessing) with a pooled softmax head."""
    return _backbone_classifier("densenet201", image_size, num_classes, dropout)


def build_mobilenetv2(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """MobileNetV2, width 1.0 (tf preprocessing), with a pooled softmax head."""
    return _backbone_classifier("mobilenetv2", image_size, num_classes, dropout)


def build_inceptionv3(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """InceptionV3 (tf preprocessing) with a pooled softmax head."""
    return _backbone_classifier("inceptionv3", image_size, num_classes, dropout)


def build_xception(image_size: int, num_classes: int, *, dropout: float = 0.3):
    """Xception (tf preprocessing) with a pooled softmax head."""
    return _backbone_classifier("xception", image_size, num_classes, dropout)


def build_hybrid(image_size: int, num_classes: int, *, dense_units: int = 512, dropout: float = 0.5):
    """InceptionV3 and Xception side by side on the same input.

    Both backbones share the tf preprocessing; their globally pooled
    features (2048 + 2048) are concatenated and go through a dense ReLU layer
    and dropout into the softmax layer. The reference study froze both
    backbones and trained only this head (``freeze_backbone_epochs`` ≥
    ``epochs`` with ImageNet weights).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = pixel_preprocessing(inputs, "tf")
    pooled = [
        layers.GlobalAveragePooling2D(name=f"{name}_pool")(build_backbone(name, image_size)(x))
        for name in ("inceptionv3", "xception")
    ]
    x = layers.Concatenate(name="features")(pooled)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="hybrid")


def build_supcon(image_size: int, num_classes: int, *, encoder: str = "resnet50", dropout: float = 0.0):
    """The classifier of a supervised contrastive (SupCon) model.

    An ImageNet-architecture encoder (default ResNet-50, as in Khosla et al.
    2020) pooled into a layer named ``"embedding"``, then a softmax layer.
    The training code first trains the encoder with
    :class:`~smearflow.training.contrastive.SupervisedContrastiveLoss` on a
    projection head attached to ``"embedding"`` (the projection head is not
    part of this model), then the softmax layer on the frozen encoder.

    Raises
    ------
    ValueError
        For an unknown encoder or an input below the encoder's minimum.
    """
    import keras
    from keras import layers

    if encoder not in BACKBONES:
        raise ValueError(f"encoder must be one of {sorted(BACKBONES)}. Received: encoder={encoder!r}")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = pixel_preprocessing(inputs, BACKBONES[encoder].preprocessing)
    x = build_backbone(encoder, image_size)(x)
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, _softmax_head(x, num_classes), name="supcon")


ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture("cnn", build_cnn, 32, "plain 5-block CNN trained from scratch"),
    "unet_encoder": Architecture("unet_encoder", build_unet_encoder, 32, "classifier on a U-Net contracting path"),
    "resnet50": Architecture("resnet50", build_resnet50, 32, "ResNet-50", "caffe", ("resnet50",)),
    "vgg16": Architecture("vgg16", build_vgg16, 32, "VGG-16", "caffe", ("vgg16",)),
    "densenet201": Architecture("densenet201", build_densenet201, 32, "DenseNet-201", "torch", ("densenet201",)),
    "mobilenetv2": Architecture("mobilenetv2", build_mobilenetv2, 32, "MobileNetV2", "tf", ("mobilenetv2",)),
    "inceptionv3": Architecture("inceptionv3", build_inceptionv3, 75, "InceptionV3", "tf", ("inceptionv3",)),
    "xception": Architecture("xception", build_xception, 71, "Xception", "tf", ("xception",)),
    "hybrid": Architecture(
        "hybrid", build_hybrid, 75, "InceptionV3 + Xception, concatenated features", "tf", ("inceptionv3", "xception")
    ),
    "supcon": Architecture(
        "supcon", build_supcon, 32, "supervised contrastive encoder + softmax head", "caffe", ("resnet50",), True
    ),
}


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name.

    Raises
    ------
    ValueError
        For a name not in the registry (the message lists the known names).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}. Known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def build_model(name: str, image_size: int, num_classes: int, **params):
    """Build a registered architecture after checking the input size.

    Raises
    ------
    ValueError
        For an unknown name, an image size below the architecture's minimum,
        or fewer than two classes.
    """
    architecture = get_architecture(name)
    if image_size < architecture.min_image_size:
        raise ValueError(
            f"{name} needs image_size >= {architecture.min_image_size}. Received: image_size={image_size}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2. Received: num_classes={num_classes}")
    return architecture.build(image_size, num_classes, **params)


# --------------------------------------------------------------------------- backbones: weights and freezing


def model_backbones(model) -> dict:
    """The nested ImageNet backbones of ``model``, by name."""
    return {layer.name: layer for layer in model.layers if layer.name in BACKBONES}


def resolve_weight_files(weights: Mapping[str, str] | None, backbone_names) -> dict[str, Path]:
    """Which local weights file goes into which backbone.

    Parameters
    ----------
    weights : mapping of str to str, optional
        ``{"imagenet": FOLDER}`` takes each backbone's standard Keras file
        (:attr:`Backbone.weights_file`) from FOLDER; ``{"xception": FILE}``
        names one backbone's file and wins over ``"imagenet"``. Keys for
        backbones not in ``backbone_names`` are ignored (a benchmark passes
        one mapping to every architecture).
    backbone_names : iterable of str
        The backbones of the model at hand.

    Returns
    -------
    dict of str to Path
        Backbone name → existing weights file; empty when training from scratch.

    Raises
    ------
    ValueError
        For a key that is neither ``"imagenet"`` nor a known backbone, or an
        ``"imagenet"`` path that is not a folder.
    FileNotFoundError
        When a weights file that applies to one of ``backbone_names`` does not exist.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(BACKBONES) - {IMAGENET_WEIGHTS_KEY})
    if unknown:
        raise ValueError(
            f"weights keys must be 'imagenet' or a backbone ({', '.join(sorted(BACKBONES))}). "
            f"Received: {unknown}"
        )
    folder = weights.get(IMAGENET_WEIGHTS_KEY)
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise ValueError(
            "imagenet=PATH must be a folder holding Keras' standard notop weight files (e.g. ~/.keras/models); "
            f"to give one file, name its backbone (xception=FILE). Received: imagenet={folder}"
        )
    files = {}
    for name in backbone_names:
        if name in weights:
            path = Path(weights[name]).expanduser()
        elif folder is not None:
            path = Path(folder).expanduser() / BACKBONES[name].weights_file
        else:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"ImageNet weights for backbone {name}: no file {path}")
        files[name] = path
    return files


def load_backbone_weights(model, weights: Mapping[str, str] | None) -> dict[str, str]:
    """Load local ImageNet weight files into the model's backbones.

    Parameters
    ----------
    model : keras.Model
        A model from :func:`build_model`.
    weights : mapping of str to str, optional
        As for :func:`resolve_weight_files`.

    Returns
    -------
    dict of str to str
        Backbone name → the file loaded into it.

    Raises
    ------
    ValueError, FileNotFoundError
        As :func:`resolve_weight_files`; ``ValueError`` also when a file does
        not fit its backbone.
    """
    backbones = model_backbones(model)
    files = resolve_weight_files(weights, backbones)
    for name, path in files.items():
        try:
            backbones[name].load_weights(str(path))
        except Exception as error:  # Keras raises many types for a mismatched file
            raise ValueError(f"{path}: cannot load into backbone {name} ({error})") from None
        logger.info("loaded %s weights from %s", name, path)
    return {name: str(path) for name, path in files.items()}


def set_backbones_trainable(model, trainable: bool) -> None:
    """Freeze or unfreeze the model's backbones.

    When unfreezing, batch-normalisation layers inside the backbones stay
    frozen (inference mode), the usual recipe for fine-tuning a pre-trained
    network on a small dataset.
    """
    from keras import layers

    for backbone in model_backbones(model).values():
        backbone.trainable = trainable
        if trainable:
            for layer in backbone.layers:
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False
