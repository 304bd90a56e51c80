"""Networks built from minialex layers."""
from .alexnet import INITS, VARIANTS, AlexNet, alexnet, init_kaiming, init_paper  # noqa: F401
