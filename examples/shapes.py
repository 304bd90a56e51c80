"""Every layer's output size, worked out with out = (W - F + 2P)/S + 1, for a built-in AlexNet
or a network you describe; a size that is not an integer, or that does not match what a note
claims (=N), is explained. The tool itself is minialex/shapes.py (its docstring has the spec).

    python examples/shapes.py paper              (or seed, torchvision, paper224, seed000)
    python examples/shapes.py seed000            seed note 000: pool strides 4 and 3 do not fit
    python examples/shapes.py --spec "input 227x3; conv 96 k11 s4; pool k3 s2 =27; fc 10"
    python examples/shapes.py --file my_net.txt --follow computed --params
    python examples/shapes.py --help
"""
import pathlib
import sys

# so that it also runs from a checkout that was not installed with pip install -e .
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from minialex.shapes import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
