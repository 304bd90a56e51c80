"""Classify images with a network trained by examples/train_alexnet.py.

    python examples/predict.py runs/alexnet/checkpoint.npz photo.jpg other.png
    python examples/predict.py runs/alexnet/checkpoint.npz *.jpg --ten-crop --top 3

Each image is prepared as the training script's validation images are: the shorter side scaled
to 256, the centre 256 x 256 square, then the network's centre crop minus the training set's
mean (or, with --ten-crop, the ten crops of §4.1, their softmax outputs averaged). For every
image it prints the `--top` most probable classes:

    photo.jpg: star 0.912, cross 0.041, heart 0.020, arrow 0.011, ring 0.006

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
from train_alexnet import model_problem  # noqa: E402  (the checks its checkpoints pass)

CHECKPOINT_KEYS = ("model", "config", "mean")


class PredictError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with status 2."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint.npz written by examples/train_alexnet.py")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--ten-crop", action="store_true",
                   help="average the softmax over 10 crops (§4.1)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    if args.top < 1:
        p.error("--top must be >= 1")
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
    if device == "cuda":
        if not mx.backend.cupy_available():
            raise PredictError("--device cuda: no usable GPU here (CuPy is not installed, or "
                               "there is no CUDA device); use --device cpu")
        model.to(device)
    model.eval()
    return model, config["classes"], checkpoint["mean"]


def class_probabilities(model, image, transform, ten_crop, device):
    """softmax(model(x)) of one image: float (num_classes,), averaged over crops if ten_crop."""
    x = transform(image)                        # (3, S, S), or (10, 3, S, S) with ten_crop
    batch = x if ten_crop else x[None]          # (crops, 3, S, S)
    with mx.no_grad():
        probabilities = F.softmax(model(mx.tensor(batch, device=device))).numpy()
    return probabilities.mean(axis=0)           # (num_classes,)


def main(argv=None):
    args = parse_args(argv)
    try:
        model, classes, mean = load_model(args.checkpoint, args.device)
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = model.input_size
    transform = data.TenCrop(size, mean) if args.ten_crop else data.EvalTransform(size, mean)
    top = min(args.top, len(classes))
    status = 0
    for path in args.images:
        try:
            image = data.load_image(path)       # uint8 (256, 256, 3), as ImageFolder gives it
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
