"""Teaching the shapes: every layer's output size, worked out with the formula students learn,

    out = (W - F + 2P)/S + 1

W the input's width (= its height: the images here are square), F the window (kernel) size,
P the padding on each side, S the stride. When S does not divide W - F + 2P, the last window
does not end on the last pixel and the result is not an integer: convolutions and PyTorch's
pooling round down (floor), cuda-convnet rounded up, and so does Caffe's pooling (ceil mode).
Parameters: K filters of F x F over C channels in G groups have K * (C/G) * F * F weights and
K biases (the paper's two GPUs are groups=2, §3.5); a fully connected layer from n inputs to
m outputs has n * m weights and m biases. minialex/ALEXNET.md: "Seed 000 is inconsistent".

A network is a list of `Layer`s; parse_spec() reads one from text.
The spec: items separated by ';' or new lines, '#' starts a comment, and the options after the
first word of an item come in any order:

    input 227x3                  a 227x227 image with 3 channels (227x227x3 works too)
    conv 96 k11 s4 p0 g1 =55     96 filters of 11x11, stride 4, padding 0, groups 1
                                 (s1, p0 and g1 are the defaults)
    pool k3 s2 p0 =27            3x3 max pooling, stride 2 (default: the window), padding 0;
                                 add the word `ceil` for ceil mode
    lrn                          local response normalization (§3.3): the size is unchanged
    avgpool 6                    adaptive average pooling to 6x6 (torchvision)
    fc 4096                      fully connected, 4096 outputs; the first one flattens

`=N` is the output size a note claims: it is checked, and a mismatch is explained, with the
stride, padding or input size that would give N. After a mismatch the rows go on from the
claimed size (follow="claimed", the default), so that every later row is checked against the
note; follow="computed" (--follow computed) goes on from the computed size instead. Examples:

    python -m minialex.shapes paper               (or seed, torchvision, paper224, seed000)
    python -m minialex.shapes --spec "input 227x3; conv 96 k11 s4; pool k3 s2 =27; fc 10"
    python -m minialex.shapes --file my_net.txt --follow computed --params
    python -m minialex.shapes paper --check       compare with minialex.models.alexnet
"""
import argparse
import sys
import textwrap
from dataclasses import dataclass, field, replace
from fractions import Fraction

from .functions.conv import output_size as conv_output_size
from .functions.pool import pool_output_size
from .models.alexnet import INPUT_SIZE, VARIANTS, alexnet
from .nn import _trace_layers  # the traced forward pass behind Module.summary()

KINDS = ("input", "conv", "pool", "lrn", "avgpool", "fc")
USAGE = {"input": "input SIZExC", "conv": "conv FILTERS kF [sS] [pP] [gG] [=N]",
         "pool": "pool kF [sS] [pP] [ceil] [=N]", "lrn": "lrn", "avgpool": "avgpool SIZE",
         "fc": "fc UNITS"}
OPTIONS = {"k": "kernel", "s": "stride", "p": "padding", "g": "groups", "=": "claimed"}

TITLES = {
    "paper": "paper: the 2012 network at 227x227 (§3.5); groups=2 in conv2, conv4 and conv5 are "
             "the two GPUs",
    "seed": "seed: the single-tower network of seed notes 001, 003 and 004 (no LRN, no groups)",
    "torchvision": "torchvision: the 'one weird trick' network (arXiv 1404.5997) at 224x224",
    "paper224": "paper224: the paper as §3.5 prints it, a 224x224 input; =N are Figure 2's sizes",
    "seed000": "seed000: seed note 000 as it states its sizes (=N); it says 'around 27.55 million "
               "parameters'",
}
BUILTIN = {
    "paper": "input 227x3; conv 96 k11 s4 p0; lrn; pool k3 s2; conv 256 k5 s1 p2 g2; lrn; "
             "pool k3 s2; conv 384 k3 s1 p1; conv 384 k3 s1 p1 g2; conv 256 k3 s1 p1 g2; "
             "pool k3 s2; fc 4096; fc 4096; fc 1000",
    "seed": "input 227x3; conv 96 k11 s4 p0; pool k3 s2; conv 256 k5 s1 p2; pool k3 s2; "
            "conv 384 k3 s1 p1; conv 384 k3 s1 p1; conv 256 k3 s1 p1; pool k3 s2; "
            "fc 4096; fc 4096; fc 1000",
    "torchvision": "input 224x3; conv 64 k11 s4 p2; pool k3 s2; conv 192 k5 s1 p2; pool k3 s2; "
                   "conv 384 k3 s1 p1; conv 256 k3 s1 p1; conv 256 k3 s1 p1; pool k3 s2; "
                   "avgpool 6; fc 4096; fc 4096; fc 1000",
    "paper224": "input 224x3; conv 96 k11 s4 p0 =55; lrn; pool k3 s2; conv 256 k5 s1 p2 g2 =27; "
                "lrn; pool k3 s2; conv 384 k3 s1 p1 =13; conv 384 k3 s1 p1 g2 =13; "
                "conv 256 k3 s1 p1 g2 =13; pool k3 s2; fc 4096; fc 4096; fc 1000",
    "seed000": "input 227x3; conv 96 k11 s4 p0 =55; pool k3 s4 =27; conv 256 k5 s1 p0 =23; "
               "pool k3 s3 =11; conv 384 k3 s1 p0 =9; conv 384 k3 s1 p0 =7; "
               "conv 256 k3 s1 p0 =5; pool k3 s2 =2; fc 4096; fc 4096; fc 1000",
}


@dataclass(frozen=True)
class Layer:
    """One layer, as far as the size of its output is concerned.

    kind: one of KINDS. `units`: the input's channels, a conv's filters or an fc's outputs.
    `size`: the input's width, or avgpool's output size. `claimed`: the output size a note
    states (conv and pool only). stride defaults to 1 for conv and to the window for pool.
    """
    kind: str
    units: int = 0
    size: int = 0
    kernel: int = 0
    stride: int = None
    padding: int = 0
    groups: int = 1
    ceil_mode: bool = False
    claimed: int = None

    def __post_init__(self):
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel if self.kind == "pool" else 1)
        problem = _problem(self)
        if problem:
            raise ValueError(f"shapes: {self.kind}: {problem}")


def _problem(layer):
    """What is wrong with one layer on its own, or None."""
    if layer.kind not in KINDS:
        return f"unknown layer kind {layer.kind!r}; expected one of {', '.join(KINDS)}"
    positive = {"input": ("size", "units"), "conv": ("units", "kernel", "stride", "groups"),
                "pool": ("kernel", "stride"), "avgpool": ("size",), "fc": ("units",)}
    for name in positive.get(layer.kind, ()):
        if not isinstance(getattr(layer, name), int) or getattr(layer, name) < 1:
            return f"{name} must be a whole number of at least 1; got {getattr(layer, name)!r}"
    if not isinstance(layer.padding, int) or layer.padding < 0:
        return f"padding must be a whole number of at least 0; got {layer.padding!r}"
    if layer.kind == "conv" and layer.units % layer.groups:
        return f"{layer.units} filters cannot be split into {layer.groups} groups"
    if layer.kind == "pool" and layer.padding > layer.kernel // 2:
        return (f"padding must be at most half the window (k{layer.kernel} allows p0 to "
                f"p{layer.kernel // 2}); got p{layer.padding}")
    if layer.ceil_mode and layer.kind != "pool":
        return "only pool has a ceil mode"
    if layer.claimed is not None and layer.kind not in ("conv", "pool"):
        return "only conv and pool layers can carry a claimed size (=N)"
    if layer.claimed is not None and (not isinstance(layer.claimed, int) or layer.claimed < 1):
        return f"a claimed size must be at least 1; got {layer.claimed!r}"
    return None


# -- the spec --------------------------------------------------------------------------------

def parse_spec(text):
    """A spec (see the module docstring) -> list of Layer; a ValueError names a bad item."""
    items = [item.strip() for line in text.splitlines() for item in line.split("#")[0].split(";")]
    items = [item for item in items if item]
    if not items:
        raise ValueError("shapes: the spec is empty; start with an input, e.g. 'input 227x3'")
    layers = []
    for number, item in enumerate(items, 1):
        try:
            layers.append(_parse_item(item))
        except ValueError as error:
            kind = item.split()[0].lower()
            reason = str(error).removeprefix("shapes: ").removeprefix(f"{kind}: ")
            raise ValueError(f"shapes: item {number} ({item!r}): {reason}") from None
    _check_order(layers, [f"item {number} ({item!r})" for number, item in enumerate(items, 1)])
    return layers


def _parse_item(item):
    kind, *words = item.split()
    kind = kind.lower()
    if kind not in KINDS:
        raise ValueError(f"unknown layer {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "input":
        numbers = words[0].lower().split("x") if len(words) == 1 else []
        if not 1 <= len(numbers) <= 3 or not all(n.isdecimal() for n in numbers):
            raise ValueError("expected 'input SIZExC', e.g. 'input 227x3'")
        numbers = [int(n) for n in numbers] + [3] * (len(numbers) == 1)  # 3 channels by default
        if len(numbers) == 3 and numbers[0] != numbers[1]:
            raise ValueError(f"only square inputs; got {numbers[0]}x{numbers[1]}")
        return Layer("input", size=numbers[0], units=numbers[-1])
    fields = {}
    if kind in ("conv", "avgpool", "fc"):  # these start with a number
        if not words or not words[0].isdecimal():
            raise ValueError(f"expected a number after {kind!r}; usage: {USAGE[kind]}")
        fields["size" if kind == "avgpool" else "units"] = int(words.pop(0))
    allowed = {"conv": "kspg=", "pool": "ksp="}.get(kind, "")
    for word in words:
        letter, digits = word[0].lower(), word[1:]
        if kind == "pool" and word.lower() == "ceil":
            fields["ceil_mode"] = True
        elif letter not in allowed:
            raise ValueError(f"unknown option {word!r}; usage: {USAGE[kind]}")
        elif not digits.isdecimal():
            raise ValueError(f"{word!r} is not {letter!r} and a whole number, e.g. {letter}2")
        elif OPTIONS[letter] in fields:
            raise ValueError(f"{OPTIONS[letter]} is given twice")
        else:
            fields[OPTIONS[letter]] = int(digits)
    if kind in ("conv", "pool") and "kernel" not in fields:
        raise ValueError(f"no window size kF (e.g. k3); usage: {USAGE[kind]}")
    return Layer(kind, **fields)


def _check_order(layers, labels):
    if layers[0].kind != "input":
        raise ValueError(f"shapes: {labels[0]}: a network starts with its input, e.g. "
                         "'input 227x3'")
    kinds = [layer.kind for layer in layers]
    for number, (kind, label) in enumerate(zip(kinds, labels)):
        if kind == "input" and number > 0:
            raise ValueError(f"shapes: {label}: only the first item can be the input")
        if kind in ("conv", "pool", "lrn", "avgpool") and "fc" in kinds[:number]:
            raise ValueError(f"shapes: {label}: a {kind} cannot follow fc (fc flattens the "
                             "image); put it before the first fc")


def builtin(name):
    """The layers of a built-in network: paper, seed, torchvision, paper224 or seed000."""
    if name not in BUILTIN:
        raise ValueError(f"shapes: unknown network {name!r}; expected one of "
                         f"{', '.join(BUILTIN)}")
    return parse_spec(BUILTIN[name])


# -- sizes, and the settings that would give another one -------------------------------------

def output_size(layer, size):
    """Windows of a conv or pool layer along one axis of a size-wide input: floor((W - F + 2P)
    /S) + 1 (ceil in ceil mode, as PyTorch counts it); None when the window does not fit."""
    if size - layer.kernel + 2 * layer.padding < 0:
        return None
    if layer.kind == "pool":
        return pool_output_size(size, layer.kernel, layer.stride, layer.padding, layer.ceil_mode)
    return conv_output_size(size, layer.kernel, layer.stride, layer.padding)


def exact_output(layer, size):
    """(W - F + 2P)/S + 1 as an exact fraction, before any rounding."""
    return Fraction(size - layer.kernel + 2 * layer.padding, layer.stride) + 1


def suggest_fixes(layer, size, wanted):
    """One-setting changes (stride up to the window, padding up to half of it, ceil mode) that
    make `layer` turn a size-wide input into `wanted`: a list of (setting, changed layer),
    at most one per setting, exact results first, then the smallest change."""
    fixes = []
    for setting, values in (("stride", range(1, layer.kernel + 1)),
                            ("padding", range(layer.kernel // 2 + 1))):
        now = getattr(layer, setting)
        good = [replace(layer, **{setting: value}) for value in values if value != now]
        good = [changed for changed in good if output_size(changed, size) == wanted]
        good.sort(key=lambda changed: (exact_output(changed, size) != wanted,
                                       abs(getattr(changed, setting) - now)))
        if good:
            fixes.append((f"{setting} {getattr(good[0], setting)}", good[0]))
    if layer.kind == "pool":  # only rounding up can help: an exact size is the same either way
        flipped = replace(layer, ceil_mode=not layer.ceil_mode)
        if output_size(flipped, size) == wanted:
            fixes.append(("ceil mode" if flipped.ceil_mode else "floor mode", flipped))
    fixes.sort(key=lambda fix: exact_output(fix[1], size) != wanted)
    return fixes


def input_sizes_giving(layer, wanted):
    """The input sizes W that `layer` turns into `wanted`: a range, empty when none does."""
    top = (wanted + 1) * layer.stride + layer.kernel  # any larger input gives more than wanted
    sizes = [width for width in range(1, top + 1) if output_size(layer, width) == wanted]
    return range(sizes[0], sizes[-1] + 1) if sizes else range(0)


def _number(value):
    return str(value) if value.denominator == 1 else f"{float(value):.2f}".rstrip("0")


# -- explain: one row per layer --------------------------------------------------------------

@dataclass
class Row:
    """One line of the explanation: the layer's output and how it came about."""
    name: str           # conv1, pool1, fc6, ...: weight layers are numbered 1 to 8 as in §3.5
    kind: str           # the layer's kind, or "flatten"
    layer: Layer        # None for flatten
    size_in: int        # the input width (spatial layers) or features (fc)
    what: str           # "96 @ 11x11 s4 p0"
    formula: str        # "(227 - 11 + 2*0)/4 + 1 = 55"
    shape: tuple        # output (H, W, C) or (features,); () when it cannot be computed
    weights: int = 0
    biases: int = 0
    computed: int = None    # the formula's (rounded) output size; None: the window does not fit
    mismatch: bool = False  # a claimed size differs from the computed one
    notes: list = field(default_factory=list)

    @property
    def params(self):
        return self.weights + self.biases


def explain(layers, follow="claimed"):
    """Work out every layer's output size and parameters: a list of Row.

    follow: after a claimed size (=N) that the formula does not give, go on from the claimed
    size ("claimed", so later rows are checked against the note) or the computed one. The
    rows stop early when a window does not fit and there is no claimed size to go on with.
    """
    if follow not in ("claimed", "computed"):
        raise ValueError(f"shapes: follow must be 'claimed' or 'computed'; got {follow!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("shapes: explain: no layers; the first must be Layer('input', ...)")
    _check_order(layers, [f"layer {n} ({layer.kind})" for n, layer in enumerate(layers, 1)])
    size, channels, features = layers[0].size, layers[0].units, None  # features: flattened
    rows = [Row("input", "input", layers[0], size, f"{channels} channels", "",
                (size, size, channels))]
    counts = {}
    for layer in layers[1:]:
        counter = "weights" if layer.kind in ("conv", "fc") else layer.kind
        counts[counter] = counts.get(counter, 0) + 1
        name = f"{layer.kind}{counts[counter]}"
        if layer.kind == "fc":
            if features is None:
                features = size * size * channels
                rows.append(Row("flatten", "flatten", None, size, f"{size}x{size}x{channels}",
                                f"{size}*{size}*{channels} = {features:,}", (features,)))
            rows.append(Row(name, "fc", layer, features, f"{features} -> {layer.units}",
                            f"params: {features}*{layer.units} + {layer.units}",
                            (layer.units,), features * layer.units, layer.units))
            features = layer.units
        elif layer.kind == "lrn":
            rows.append(Row(name, "lrn", layer, size, "local response norm",
                            "size unchanged (§3.3)", (size, size, channels)))
        elif layer.kind == "avgpool":  # PyTorch's bin i: [floor(i W / N), ceil((i + 1) W / N))
            N = layer.size
            bins = {-(-(i + 1) * size // N) - i * size // N for i in range(N)}
            how = ("identity: every bin is 1 pixel" if size == N else f"{size} into {N} bins "
                   f"of {min(bins)}" + f" to {max(bins)}" * (len(bins) > 1) + " pixels")
            rows.append(Row(name, "avgpool", layer, size, f"adaptive to {N}x{N}", how,
                            (N, N, channels)))
            size = N
        else:
            row = _window_row(name, layer, size, channels, follow)
            rows.append(row)
            size = layer.claimed if row.mismatch and follow == "claimed" else row.computed
            if size is None:
                row.notes.append("The layers below cannot be computed.")
                break
            channels = row.shape[2]
    return rows


def _window_row(name, layer, size, channels, follow):
    F, S, P = layer.kernel, layer.stride, layer.padding
    exact, computed = exact_output(layer, size), output_size(layer, size)
    formula = f"({size} - {F} + 2*{P})/{S} + 1 = {_number(exact)}"
    formula += f" -> {computed}" * (computed is not None and computed != exact)
    if layer.kind == "conv":
        what = f"{layer.units} @ {F}x{F} s{S} p{P}" + f" g{layer.groups}" * (layer.groups > 1)
        channels_out = layer.units
    else:
        what = f"max {F}x{F} s{S}" + f" p{P}" * (P > 0) + " ceil" * layer.ceil_mode
        channels_out = channels
    row = Row(name, layer.kind, layer, size, what, formula,
              () if computed is None else (computed, computed, channels_out), computed=computed)
    if layer.kind == "conv":
        if channels % layer.groups:
            raise ValueError(f"shapes: {name}: {channels} input channels cannot be split into "
                             f"{layer.groups} groups")
        row.weights, row.biases = layer.units * (channels // layer.groups) * F * F, layer.units
        seen = f"{channels}" if layer.groups == 1 else f"({channels}/{layer.groups})"
        row.notes.append(f"params: {layer.units} filters * {seen} channels * {F}*{F} + "
                         f"{layer.units} biases = {row.params:,}")
    if computed is None:
        row.notes.append(f"Cannot fit: the {F}x{F} window is larger than the {size}x{size} "
                         "input" + f" with padding {P}" * (P > 0) + f", so W - F + 2P = "
                         f"{size - F + 2 * P} is negative.")
    elif computed != exact:
        row.notes.append(_rounding_note(layer, size, computed))
    if layer.claimed is not None and computed != layer.claimed:
        row.mismatch = True
        row.notes.append(_mismatch_note(layer, size, computed, follow))
    return row


def _rounding_note(layer, size, computed):
    F, S, P = layer.kernel, layer.stride, layer.padding
    span = size - F + 2 * P
    left, floor, ceil = span % S, span // S + 1, -(-span // S) + 1
    text = f"Not an integer: {span}/{S} leaves {left} over. "
    if layer.kind == "conv":
        pixels = f"{left} pixel" + "s" * (left > 1) + " of the" + " padded" * (P > 0) + " input"
        text += (f"Convolutions round down, to {floor}: the last {pixels} "
                 f"{'is' if left == 1 else 'are'} never read. cuda-convnet rounded up, to {ceil}. ")
    elif not layer.ceil_mode:
        text += f"Pooling rounds down by default (PyTorch), to {floor}; ceil mode gives {ceil}. "
    else:
        text += (f"Ceil mode (Caffe's pooling) rounds up, to {computed}; floor would give "
                 f"{floor}" + ". " * (computed == ceil) + " (PyTorch drops a last window that "
                 "would start in the padding). " * (computed != ceil))
    exact_inputs = [w for w in (size - left, size + S - left) if w >= max(1, F - 2 * P)]
    text += "Exact with an input of " + " or ".join(
        f"{w} (giving {(w - F + 2 * P) // S + 1})" for w in exact_inputs)
    paddings = [p for p in range(F // 2 + 1) if (size - F + 2 * p) % S == 0 and size + 2 * p >= F]
    if paddings:
        text += f", or with padding {paddings[0]} (giving {(size - F + 2 * paddings[0]) // S + 1})"
    elif S % 2 == 0 and (size - F) % 2:
        text += f"; no padding makes it exact ({size} - {F} + 2P is odd, the stride even)"
    return text + "."


def _mismatch_note(layer, size, computed, follow):
    claimed, value = layer.claimed, exact_output(layer, size)
    formula = f"({size} - {layer.kernel} + 2*{layer.padding})/{layer.stride} + 1"
    got = ("the window does not fit" if computed is None else f"{formula} = {computed}"
           if value == computed else f"{formula} = {_number(value)}, rounded to {computed}")
    text = f"MISMATCH: the note says {claimed}, but {got}."
    ways = []
    for setting, changed in suggest_fixes(layer, size, claimed):
        new = exact_output(changed, size)
        ways.append(setting + f" ({_number(new)} rounded {'down' if new > claimed else 'up'})"
                    * (new != claimed))
    inputs = input_sizes_giving(layer, claimed)
    if inputs:
        ways.append(f"an input of {inputs[0]}" + f" to {inputs[-1]}" * (len(inputs) > 1)
                    + f" instead of {size}")
    if ways:
        text += f" It would be {claimed} with " + "; or ".join(ways) + "."
    if follow == "claimed":
        return text + (f" The rows below go on from the note's {claimed}x{claimed}, so that "
                       "they are checked against the note.")
    return text + f" The rows below go on from the computed {computed}x{computed}." * (
        computed is not None)


def total_parameters(rows):
    return sum(row.params for row in rows)


def _fix_everything(rows):
    """Apply the first suggested fix to the first mismatch until none is left. Returns the
    changes ("pool1 stride 2", ...), or None when a mismatch has no one-setting fix."""
    layers = [row.layer for row in rows if row.layer is not None]
    changes = []
    for _ in range(len(layers)):
        current = [row for row in explain(layers, follow="computed") if row.layer is not None]
        wrong = [position for position, row in enumerate(current) if row.mismatch]
        if not wrong:
            return changes
        row = current[wrong[0]]  # the rows without flatten are the layers, in order
        fixes = suggest_fixes(row.layer, row.size_in, row.layer.claimed)
        if not fixes:
            return None
        setting, layers[wrong[0]] = fixes[0]
        changes.append(f"{row.name} {setting}")
    return None


def render(rows, title=None, show_params=False):
    """The rows as a table a student can read, 100 characters wide at most."""
    claims = any(row.layer is not None and row.layer.claimed is not None for row in rows)
    lines = [title] if title else []
    lines.append("out = (W - F + 2P)/S + 1   with W the input size, F the window, P the padding, "
                 "S the stride")
    lines += ["", f"{'layer':<9}{'what':<21}{'output size':<38}" + f"{'note':<6}" * claims
              + f"{'output':<11}{'params':>11}"]
    for row in rows:
        claim = "" if row.layer is None or row.layer.claimed is None else str(row.layer.claimed)
        note = f"{claim + ' !' * row.mismatch:<6}" * claims
        shape = "x".join(str(n) for n in row.shape) or "-"
        params = "" if row.kind == "input" else f"{row.params:,}"
        line = f"{row.name:<9}{row.what:<21}{row.formula:<38}{note}{shape:<11}{params:>11}"
        lines.append(line.rstrip())
        lines += [textwrap.fill(text, 99, initial_indent=" " * 9, subsequent_indent=" " * 9)
                  for text in row.notes if show_params or not text.startswith("params:")]
    weights, biases = sum(row.weights for row in rows), sum(row.biases for row in rows)
    lines += ["", ("total" if rows[-1].shape else "total so far") + f": {weights + biases:,} "
              f"parameters ({weights:,} weights + {biases:,} biases)"]
    wrong = [row for row in rows if row.mismatch]
    if wrong:
        changes = _fix_everything(rows)
        lines += textwrap.wrap(f"{len(wrong)} size(s) differ from the note: " + ", ".join(
            f"{row.name} ({'-' if row.computed is None else row.computed}, not "
            f"{row.layer.claimed})" for row in wrong) + ".", 100) + textwrap.wrap(
            f"With {' and '.join(changes)}, every size in the note follows." if changes else
            "No change of one stride, padding or rounding mode per layer makes every size in "
            "the note follow.", 100)
    return "\n".join(lines)


# -- the real engine, as a check -------------------------------------------------------------

_MODULES = {"conv": "Conv2d", "pool": "MaxPool2d", "lrn": "LocalResponseNorm", "fc": "Linear",
            "avgpool": "AdaptiveAvgPool2d", "flatten": "Flatten"}


def check_against_model(variant):
    """Run minialex.models.alexnet(variant) at full width on one zero image and compare every
    layer's output shape, and the parameter total, with explain(builtin(variant)). Returns
    the differences as lines: an empty list when the two agree."""
    if variant not in VARIANTS:
        raise ValueError(f"shapes: check_against_model: variant must be one of {VARIANTS}; "
                         f"got {variant!r}")
    model, size = alexnet(variant), INPUT_SIZE[variant]
    traced = [(type(module).__name__, shape)
              for module, shape in _trace_layers(model, (3, size, size))
              if type(module).__name__ not in ("ReLU", "Dropout")]  # shape-neutral
    rows = explain(builtin(variant))[1:]
    problems = []
    if len(rows) != len(traced):
        problems.append(f"{len(rows)} rows here, {len(traced)} layers in the model")
    for row, (module, shape) in zip(rows, traced):
        ours = row.shape[2:] + row.shape[:2]  # (H, W, C) -> (C, H, W); (n,) stays
        if (_MODULES[row.kind], ours) != (module, shape):
            problems.append(f"{row.name}: {_MODULES[row.kind]} {ours} here, {module} {shape} "
                            "in the model")
    if total_parameters(rows) != model.num_parameters():
        problems.append(f"{total_parameters(rows):,} parameters here, "
                        f"{model.num_parameters():,} in the model")
    return problems


# -- the command line ------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m minialex.shapes", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Every layer's output size, worked out with out = (W - F + 2P)/S + 1, and its"
                    "\nparameters; a size that is not an integer, or that differs from what a "
                    "note\nclaims, is explained.", epilog=__doc__[__doc__.index("The spec:"):])
    parser.add_argument("network", nargs="?", choices=list(BUILTIN),
                        help="a built-in network: " + ", ".join(BUILTIN))
    parser.add_argument("--spec", help='a network as text, e.g. "input 227x3; conv 96 k11 s4"')
    parser.add_argument("--file", help="a text file holding a spec")
    parser.add_argument("--follow", choices=("claimed", "computed"), default="claimed",
                        help="after a mismatch, go on from the claimed size (default) or the "
                             "computed one")
    parser.add_argument("--params", action="store_true",
                        help="show how each convolution's parameters are counted")
    parser.add_argument("--check", action="store_true",
                        help="also run minialex.models.alexnet(NETWORK) and compare shapes")
    args = parser.parse_args(argv)
    if sum(given is not None for given in (args.network, args.spec, args.file)) != 1:
        parser.error("give exactly one network: a name (e.g. paper), --spec TEXT or --file PATH")
    if args.check and args.network not in VARIANTS:
        parser.error(f"--check compares with minialex.models.alexnet: give one of {VARIANTS}")
    try:
        text = args.spec if args.file is None else _read(args.file)
        rows = explain(parse_spec(BUILTIN[args.network] if args.network else text),
                       follow=args.follow)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(rows, TITLES.get(args.network), args.params))
    if args.check:
        problems = check_against_model(args.network)
        print("", *problems, sep="\n")
        if problems:
            return 1
        print(f"minialex.models.alexnet({args.network!r}) agrees: {len(rows) - 1} layer shapes "
              f"and {total_parameters(rows):,} parameters")
    return 0


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        why = "not UTF-8 text" if isinstance(error, ValueError) else error.strerror
        raise ValueError(f"shapes: cannot read the spec file {path!r} ({why}); give a text "
                         "file with one layer per line") from None


if __name__ == "__main__":
    sys.exit(main())
