"""Networks built from minialex layers."""
from .alexnet import VARIANTS, AlexNet, alexnet, init_paper  # noqa: F401
