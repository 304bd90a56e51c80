"""The bundled dataset: shapes drawn with Pillow on cluttered, noisy backgrounds. No download.

Ten classes of shapes, each drawn at a random position, scale and rotation, in a random colour,
over a random colour gradient crossed by random lines and speckled with noise. Colour, size
and position carry no information about the class, so a network has to learn the shapes'
outlines, corners and holes: spatial features, as on photographs. Telling a ring from a
circle, or a square from a cross, takes more than a colour histogram.

Every image is a pure function of (seed, split, index): drawn when asked for, never stored, so
the dataset costs no memory and no disk, and the train/validation split is fixed by the seed.
"""
import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "ring", "triangle", "square", "star", "cross", "arrow", "crescent",
           "heart", "lightning")

# Outlines on the unit square centred at 0 (x right, y down), before rotation and scaling.
_POLYGONS = {
    "triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "star": [(math.sin(k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.42),
              -math.cos(k * math.pi / 5) * (1.0 if k % 2 == 0 else 0.42)) for k in range(10)],
    "cross": [(-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3),
              (0.3, 1.0), (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3)],
    "arrow": [(-1.0, -0.25), (0.2, -0.25), (0.2, -0.7), (1.0, 0.0), (0.2, 0.7), (0.2, 0.25),
              (-1.0, 0.25)],
    "heart": [(16 * math.sin(t) ** 3 / 17,
               -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                 - math.cos(4 * t)) / 17) for t in np.linspace(0, 2 * math.pi, 40)],
    "lightning": [(-0.2, -1.0), (0.55, -1.0), (0.15, -0.2), (0.6, -0.2), (-0.35, 1.0),
                  (-0.05, 0.1), (-0.5, 0.1)],
}

SPLITS = {"train": 0, "val": 1}


class SyntheticShapes:
    """Shapes on clutter: `per_class` images of each of the 10 classes in `split`.

    image_size: the side of the square images (256 by default, which the paper's pipeline
    crops to 227). Images are uint8 (image_size, image_size, 3), RGB.
    cache: keep each image once drawn (image_size^2 * 3 bytes each: 197 KB at 256), so that
    epochs after the first cost no drawing; without it nothing is kept.
    """

    classes = list(CLASSES)

    def __init__(self, split="train", per_class=300, image_size=256, seed=0, cache=False):
        if split not in SPLITS:
            raise ValueError(f"SyntheticShapes: split must be one of {tuple(SPLITS)}; got "
                             f"{split!r}")
        if per_class < 1 or image_size < 32:
            raise ValueError(f"SyntheticShapes: needs per_class >= 1 and image_size >= 32; got "
                             f"per_class={per_class}, image_size={image_size}")
        self.split, self.per_class, self.image_size, self.seed = split, per_class, image_size, seed
        self.cache = {} if cache else None  # index -> image; threads write distinct keys

    def __len__(self):
        return self.per_class * len(CLASSES)

    def label(self, index):
        return index % len(CLASSES)  # classes interleaved: any prefix is balanced

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"SyntheticShapes: index {index} out of range [0, {len(self)})")
        label = self.label(index)
        if self.cache is not None and index in self.cache:
            return self.cache[index], label
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        image = draw_example(CLASSES[label], self.image_size, rng)
        if self.cache is not None:
            self.cache[index] = image
        return image, label


def _random_colour(rng, low=0, high=256):
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _background(size, rng):
    """A random two-colour gradient in a random direction, crossed by random lines."""
    a, b = np.array(_random_colour(rng, 0, 120)), np.array(_random_colour(rng, 0, 120))
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]  # (size, size)
    t -= t.min()
    t *= 255 / t.max()
    # a colour table indexed by the quantised gradient: one gather instead of float maths
    table = (a + (b - a) * np.linspace(0, 1, 256)[:, None]).astype(np.uint8)  # (256, 3)
    image = Image.fromarray(table[t.astype(np.uint8)])
    _scribble(image, size, rng, int(rng.integers(4, 10)))
    return image


def _scribble(image, size, rng, count):
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        points = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=_random_colour(rng, 0, 200), width=max(1, size // 128))


def _shape_mask(name, size, rng):
    """A mask (L image) of one shape at a random place, scale and rotation."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    # Large shapes (a radius of a quarter to a third of the side) keep the outline many
    # pixels wide after conv1's stride of 4, which a 5-minute CPU run needs to learn them.
    radius = rng.uniform(0.24, 0.36) * size
    # the whole shape inside the image; a random 227 crop may cut a few pixels off its edge
    margin = radius + 0.02 * size
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if name in ("circle", "ring", "crescent"):
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        draw.ellipse(box, fill=255)
        if name == "ring":
            inner = radius * rng.uniform(0.45, 0.65)
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
        elif name == "crescent":
            shift = radius * 0.55
            ox, oy = cx + shift * math.cos(angle), cy + shift * math.sin(angle)
            draw.ellipse([ox - radius, oy - radius, ox + radius, oy + radius], fill=0)
        return mask
    cos, sin = math.cos(angle), math.sin(angle)
    points = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos))
              for x, y in _POLYGONS[name]]
    draw.polygon(points, fill=255)
    return mask


def _shape_colour(rng):
    """A random colour brighter than any background (backgrounds are drawn from 0..119 per
    channel): shapes may be any hue, but their edges always rise from the background."""
    colour = rng.integers(0, 256, 3)
    colour[rng.integers(0, 3)] = rng.integers(200, 256)  # at least one bright channel
    return tuple(int(v) for v in np.maximum(colour, 140))


def draw_example(name, size, rng):
    """One image of class `name` as a uint8 array (size, size, 3)."""
    image = _background(size, rng)
    mask = _shape_mask(name, size, rng)
    fill = Image.new("RGB", (size, size), _shape_colour(rng))
    image = Image.composite(fill, image, mask)
    _scribble(image, size, rng, int(rng.integers(1, 4)))  # clutter over the shape too
    pixels = np.asarray(image, dtype=np.int16)
    # uniform noise in [-16, 16] from raw random bytes: much cheaper than integers()
    noise = np.frombuffer(rng.bytes(pixels.size), dtype=np.uint8).reshape(pixels.shape)
    pixels += (noise % 33).astype(np.int16) - 16
    return np.clip(pixels, 0, 255).astype(np.uint8)
