"""Classify images with a network trained by examples/train_alexnet.py, or with torchvision's
ImageNet-trained AlexNet (read without torch: minialex/interop.py).

    python examples/predict.py runs/alexnet/checkpoint.npz photo.jpg other.png
    python examples/predict.py runs/alexnet/checkpoint.npz *.jpg --ten-crop --top 3
    python examples/predict.py --weights alexnet-owt-7be5be79.pth photo.jpg --filters f.png

Each image is prepared as the training script's validation images are: the shorter side scaled
to 256, the centre 256 x 256 square, then the network's centre crop minus the training set's
mean (or, with --ten-crop, the ten crops of §4.1, their softmax outputs averaged). For every
image it prints the `--top` most probable classes:

    photo.jpg: star 0.912, cross 0.041, heart 0.020, arrow 0.011, ring 0.006

With --weights, each image is prepared as torchvision's AlexNet_Weights.IMAGENET1K_V1 expects
(torchvision/transforms/_presets.py, ImageClassification): the shorter side resized to 256
(bilinear; the longer to int(256 * long / short)), the centre 224 x 224 crop (its corner at
int(round((side - 224) / 2))), scaled to [0, 1], minus ImageNet's mean, over its std; the
classes are ImageNet's 1,000 (minialex/data/imagenet_classes.txt). --filters draws conv1's
filters, as the training script's conv1_filters.png (the paper's Figure 3).

A bad checkpoint is one line `error: ...` and exit status 2. An image that cannot be read (a
missing file, not an image, one too large to decode safely) is one line `error: ...` of its
own; the other images are still classified, and the exit status is then 2.
"""
import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

# so that it also runs from a checkout that was not installed with pip install -e .
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import minialex as mx  # noqa: E402
import minialex.functional as F  # noqa: E402
from minialex import data  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # train_alexnet.py beside it
from train_alexnet import model_problem, plot_filters  # noqa: E402  (reused, not copied)

CHECKPOINT_KEYS = ("model", "config", "mean")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision's, per RGB channel
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class PredictError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="*", metavar="[checkpoint] image",
                   help="checkpoint.npz written by examples/train_alexnet.py (none with "
                        "--weights), then image files (JPEG, PNG, ...)")
    p.add_argument("--weights", metavar="PTH", help="torchvision's AlexNet weights "
                   "(alexnet-owt-7be5be79.pth), read without torch: ImageNet's 1000 classes")
    p.add_argument("--filters", metavar="PNG", help="also draw conv1's filters in this file")
    p.add_argument("--ten-crop", action="store_true",
                   help="average the softmax over 10 crops (§4.1)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.top < 1:
        p.error("--top must be >= 1")
    if args.weights is None and not args.paths:
        p.error("give a checkpoint.npz of train_alexnet.py and images, or --weights FILE.pth")
    args.checkpoint = None if args.weights else args.paths[0]
    args.images = args.paths if args.weights else args.paths[1:]
    if not args.images and not args.filters:
        p.error("give at least one image file (or --filters PNG)")
    if args.weights and args.ten_crop:
        p.error("--ten-crop is for checkpoints of train_alexnet.py; torchvision's weights "
                "are evaluated on one centre crop")
    return args


def load_model(path, device):
    """The trained network, in eval mode on `device`, its class names and training mean."""
    try:
        checkpoint = mx.load(path)
    except (OSError, ValueError) as error:
        raise PredictError(f"{error}; give the checkpoint.npz that train_alexnet.py wrote in "
                           "its --out folder") from error
    if not isinstance(checkpoint, dict) or not set(CHECKPOINT_KEYS) <= checkpoint.keys():
        raise PredictError(f"{path} is a minialex file but not a checkpoint of "
                           "train_alexnet.py (no model, config and mean in it); give the "
                           "checkpoint.npz from its --out folder")
    problem = model_problem(checkpoint)
    if problem:
        raise PredictError(f"{path} holds a bad checkpoint: {problem}; give the checkpoint.npz "
                           "that train_alexnet.py wrote in its --out folder")
    config = checkpoint["config"]
    try:
        model = mx.models.alexnet(config["variant"], num_classes=config["num_classes"],
                                  width=config["width"])
        model.load_state_dict(checkpoint["model"])
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        message = " ".join(str(error).split())[:300]
        raise PredictError(f"{path} holds a bad checkpoint: its weights do not fit its config "
                           f"({type(error).__name__}: {message}); give the checkpoint.npz "
                           "that train_alexnet.py wrote in its --out folder") from error
    to_device(model, device).eval()
    return model, config["classes"], checkpoint["mean"]


def to_device(model, device):
    if device == "cuda":
        if not mx.backend.cupy_available():
            raise PredictError("--device cuda: no usable GPU here (CuPy is not installed, or "
                               "there is no CUDA device); use --device cpu")
        model.to(device)
    return model


def load_torchvision_model(path, device):
    """torchvision's AlexNet with the weights in `path`, in eval mode on `device`."""
    try:
        model = mx.models.alexnet("torchvision", weights=path)
    except (OSError, ValueError) as error:
        raise PredictError(f"{error}; give torchvision's alexnet-owt-7be5be79.pth (README.md, "
                           "\"Real ImageNet weights\")") from error
    return to_device(model, device).eval()


def imagenet_crop(path):
    """uint8 (224, 224, 3) RGB: the shorter side resized to 256 as torchvision's Resize(256)
    does, then its CenterCrop(224); the full image is decoded (no JPEG draft), as there."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(256 * long / short)
    size = (256, resized_long) if width <= height else (resized_long, 256)
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR))
    top, left = (int(round((side - 224) / 2.0)) for side in (size[1], size[0]))
    return pixels[top:top + 224, left:left + 224]


def imagenet_normalize(crop):
    """float32 (3, 224, 224): pixels / 255, minus ImageNet's mean, over its std."""
    return ((crop.astype(np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def class_probabilities(model, image, transform, ten_crop, device):
    """softmax(model(x)) of one image: float (num_classes,), averaged over crops if ten_crop."""
    x = transform(image)                        # (3, S, S), or (10, 3, S, S) with ten_crop
    batch = x if ten_crop else x[None]          # (crops, 3, S, S)
    with mx.no_grad():
        probabilities = F.softmax(model(mx.tensor(batch, device=device))).numpy()
    return probabilities.mean(axis=0)           # (num_classes,)


def draw_filters(model, path):
    """conv1's filters in `path`, drawn by the training script's plot_filters."""
    try:
        plot_filters(mx.backend.as_numpy(model.features[0].weight.data), path)
    except ImportError as error:
        raise PredictError(f"--filters needs matplotlib ({error}); pip install matplotlib") \
            from error
    except (OSError, ValueError) as error:
        raise PredictError(f"--filters {path}: cannot write it ({error})") from error


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.weights:
            model = load_torchvision_model(args.weights, args.device)
            classes = mx.interop.imagenet_classes()
            read, transform = imagenet_crop, imagenet_normalize
        else:
            model, classes, mean = load_model(args.checkpoint, args.device)
            size = model.input_size
            read = data.load_image              # uint8 (256, 256, 3), as ImageFolder gives it
            transform = (data.TenCrop(size, mean) if args.ten_crop
                         else data.EvalTransform(size, mean))
        if args.filters:
            draw_filters(model, args.filters)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    top = min(args.top, len(classes))
    status = 0
    for path in args.images:
        try:
            image = read(path)
        except OSError as error:                # a missing file, or one Pillow cannot decode
            reason = error.strerror or "not an image Pillow can read"
            print(f"error: {path}: {reason}; give a JPEG or PNG image file", file=sys.stderr)
            status = 2
            continue
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds on a bad file:
            # DecompressionBombError for a huge image, ValueError, SyntaxError, ...
            reason = " ".join(str(error).split())[:200].rstrip(".") or type(error).__name__
            hint = "give a JPEG or PNG image file"
            if isinstance(error, Image.DecompressionBombError):
                reason, hint = f"too large to decode safely ({reason})", "give a smaller image"
            print(f"error: {path}: {reason}; {hint}", file=sys.stderr)
            status = 2
            continue
        probabilities = class_probabilities(model, image, transform, args.ten_crop, args.device)
        best = np.argsort(-probabilities, kind="stable")[:top]
        print(f"{path}: " + ", ".join(f"{classes[i]} {probabilities[i]:.3f}" for i in best))
    return status


if __name__ == "__main__":
    sys.exit(main())
