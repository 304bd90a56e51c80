"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NIPS 2012. Three variants (minialex/ALEXNET.md has the facts and their sources):

    paper        the 2012 network: LRN after conv1 and conv2 (§3.3), overlapping pooling
                 (§3.4), groups=2 in conv2, conv4, conv5 for the two GPUs (§3.5), dropout on
                 fc6 and fc7 (§4.2); input 227; 60,965,224 parameters at 1000 classes
    seed         the single-tower network of the seed notes: no LRN, no groups, dropout before
                 fc6 and fc7; input 227; 62,378,344 parameters
    torchvision  the "one weird trick" network (arXiv 1404.5997) as torchvision builds it:
                 64/192/384/256/256 channels, padding 2 in conv1, input 224; 61,100,840

Parameter names match torchvision's (features.0.weight, classifier.1.weight, ...), so weights
converted from torchvision load into the `torchvision` variant as they are.

`width` multiplies every channel count and the width of fc6 and fc7, keeping the topology,
kernel sizes and strides: width=0.25 trains on a CPU in minutes, width=1 is the real thing.
`dropout` sets the paper's p = 0.5 of fc6 and fc7 (torchvision's AlexNet has the same argument).
"""
import numpy as np

from .. import interop, nn, random

VARIANTS = ("paper", "seed", "torchvision")
INITS = ("pytorch", "paper", "kaiming")
INPUT_SIZE = {"paper": 227, "seed": 227, "torchvision": 224}


def _scaled(channels, width, multiple=2):
    """channels * width, rounded to a multiple of `multiple` (so groups=2 still divides it)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


class AlexNet(nn.Module):
    def __init__(self, variant="paper", num_classes=1000, width=1.0, init="pytorch",
                 dropout=0.5):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"alexnet: unknown variant {variant!r}; expected one of {VARIANTS}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"alexnet: num_classes must be a positive int; got {num_classes!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"alexnet: dropout must be in [0, 1); got {dropout!r}")
        if not width > 0:
            raise ValueError(f"alexnet: width must be > 0; got {width!r}")
        if init not in INITS:
            raise ValueError(f"alexnet: init must be one of {INITS}; got {init!r}")
        self.variant, self.num_classes, self.width = variant, num_classes, width
        self.input_size = INPUT_SIZE[variant]
        c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (
            (64, 192, 384, 256, 256) if variant == "torchvision" else (96, 256, 384, 384, 256)))
        hidden = _scaled(4096, width)
        flat = c5 * 6 * 6

        if variant == "paper":
            # LRN with the paper's k=2, n=5, alpha=1e-4, beta=0.75; PyTorch's convention
            # divides alpha by n, hence 5e-4 here (minialex/ALEXNET.md, "Local response
            # normalization").
            self.features = nn.Sequential(                                   # (N, 3, 227, 227)
                nn.Conv2d(3, c1, 11, stride=4),                              # (N, 96, 55, 55)
                nn.ReLU(),
                nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
                nn.MaxPool2d(3, stride=2),                                   # (N, 96, 27, 27)
                nn.Conv2d(c1, c2, 5, padding=2, groups=2),                   # (N, 256, 27, 27)
                nn.ReLU(),
                nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
                nn.MaxPool2d(3, stride=2),                                   # (N, 256, 13, 13)
                nn.Conv2d(c2, c3, 3, padding=1),                             # (N, 384, 13, 13)
                nn.ReLU(),
                nn.Conv2d(c3, c4, 3, padding=1, groups=2),                   # (N, 384, 13, 13)
                nn.ReLU(),
                nn.Conv2d(c4, c5, 3, padding=1, groups=2),                   # (N, 256, 13, 13)
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2),                                   # (N, 256, 6, 6)
            )
            self.flatten = nn.Flatten()                                      # (N, 9216)
            self.classifier = nn.Sequential(
                nn.Linear(flat, hidden),                                     # (N, 4096) fc6
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),                                   # (N, 4096) fc7
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),                              # (N, 1000) fc8
            )
        else:
            padding1 = 2 if variant == "torchvision" else 0
            self.features = nn.Sequential(                                   # (N, 3, 227, 227)
                nn.Conv2d(3, c1, 11, stride=4, padding=padding1),            # (N, 96, 55, 55)
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2),                                   # (N, 96, 27, 27)
                nn.Conv2d(c1, c2, 5, padding=2),                             # (N, 256, 27, 27)
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2),                                   # (N, 256, 13, 13)
                nn.Conv2d(c2, c3, 3, padding=1),                             # (N, 384, 13, 13)
                nn.ReLU(),
                nn.Conv2d(c3, c4, 3, padding=1),                             # (N, 384, 13, 13)
                nn.ReLU(),
                nn.Conv2d(c4, c5, 3, padding=1),                             # (N, 256, 13, 13)
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2),                                   # (N, 256, 6, 6)
            )
            if variant == "torchvision":  # the identity at 224; fixes 6x6 for other sizes
                self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.flatten = nn.Flatten()                                      # (N, 9216)
            self.classifier = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(flat, hidden),                                     # (N, 4096) fc6
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),                                   # (N, 4096) fc7
                nn.ReLU(),
                nn.Linear(hidden, num_classes),                              # (N, 1000) fc8
            )
        if init == "paper":
            init_paper(self)
        elif init == "kaiming":
            init_kaiming(self)

    def forward(self, x):
        x = self.features(x)
        if self.variant == "torchvision":
            x = self.avgpool(x)
        return self.classifier(self.flatten(x))

    def summary(self, input_shape=None, show_all=False):
        """The layer table; input_shape defaults to this variant's (3, 227, 227) or 224."""
        if input_shape is None:
            input_shape = (3, self.input_size, self.input_size)
        return super().summary(input_shape, show_all)

    def extra_repr(self):
        return f"variant={self.variant!r}, num_classes={self.num_classes}, width={self.width}"


def init_paper(model, bias=1.0):
    """The paper's initialisation (§5): every weight ~ N(0, 0.01); biases 1 in conv2, conv4,
    conv5 and the hidden fully connected layers (fc6, fc7), 0 in conv1, conv3 and fc8.

    Caffe's reference model uses 0.1 instead of 1 for those biases; pass bias=0.1 for that.
    """
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    layers_with_bias_one = {id(convs[1]), id(convs[3]), id(convs[4]), id(linears[0]),
                            id(linears[1])}
    generator = random.generator(np)
    for layer in convs + linears:
        weight = generator.normal(0.0, 0.01, size=layer.weight.shape)
        layer.weight.data = weight.astype(layer.weight.dtype)
        if layer.bias is not None:
            value = bias if id(layer) in layers_with_bias_one else 0.0
            layer.bias.data = np.full(layer.bias.shape, value, dtype=layer.bias.dtype)
    return model


def init_kaiming(model):
    """He et al. 2015 ("Delving deep into rectifiers", §2.2): weights ~ N(0, 2 / fan_in), biases
    0. A ReLU zeroes half of its inputs, so doubling the variance keeps the signal's size
    constant through the layers. PyTorch's default (variance 1 / (3 fan_in)) shrinks it by
    about 6x per layer, and the paper's N(0, 0.01) by a size-dependent factor: through eight
    layers both start with logits near 0, and SGD needs many epochs to leave that plateau.
    The last layer gets variance 1 / fan_in: it feeds the softmax, not a ReLU.
    """
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    generator = random.generator(np)
    for index, layer in enumerate(layers):
        fan_in = layer.weight.size // layer.weight.shape[0]
        gain = 1.0 if index == len(layers) - 1 else 2.0
        weight = generator.normal(0.0, np.sqrt(gain / fan_in), size=layer.weight.shape)
        layer.weight.data = weight.astype(layer.weight.dtype)
        if layer.bias is not None:
            layer.bias.data = np.zeros(layer.bias.shape, dtype=layer.bias.dtype)
    return model


def alexnet(variant="paper", num_classes=1000, width=1.0, init="pytorch", dropout=0.5,
            weights=None):
    """Build AlexNet: variant "paper", "seed" or "torchvision" (see the module docstring).

    dropout: the probability of zeroing a unit of fc6 and fc7 in training, 0.5 in the paper
    (§4.2); 0 keeps the layers (they become the identity) so state dicts stay compatible.
    weights: a file to load, read without torch (minialex/interop.py): torchvision's
    alexnet-owt-7be5be79.pth for variant="torchvision", or a minialex state dict or checkpoint.
    """
    model = AlexNet(variant, num_classes, width, init, dropout)
    return model if weights is None else interop.load_weights(model, weights)
