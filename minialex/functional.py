"""The public functions, PyTorch's names and signatures, as in `torch.nn.functional`.

Each is defined beside its Function class in `minialex/functions/`; this module only gathers
them, so `import minialex.functional as F` gives the whole list in one place.
"""
from .functions.activation import relu  # noqa: F401
from .functions.conv import conv2d  # noqa: F401
from .functions.dropout import dropout  # noqa: F401
from .functions.linear import linear  # noqa: F401
from .functions.loss import cross_entropy, log_softmax, softmax  # noqa: F401
from .functions.lrn import local_response_norm  # noqa: F401
from .functions.pool import adaptive_avg_pool2d, max_pool2d  # noqa: F401
from .functions.shape import flatten  # noqa: F401
