"""The visible line budget (STYLE.md, item 15): students read this code on laptops. The reference
engine has its own budget, apart from the fast paths and the GPU glue, and stays free of them;
every file the code and the README cite exists."""
import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINE = 100

# Lines of each part of minialex/, comments and docstrings included
REFERENCE = ["__init__.py", "tensor.py", "dispatch.py", "backend.py", "nn.py", "optim.py",
             "gradcheck.py", "serialization.py", "random.py", "functional.py", "functions/",
             "models/"]
FAST = ["fast/"]
GPU_GLUE = ["gpu.py", "cuda.py"]
DATA_AND_SHAPES = ["data/", "shapes.py"]
DISTRIBUTED = ["distributed.py"]  # several processes (MPI): not part of the reference engine
INTEROP = ["interop.py", "onnx.py"]  # torchvision's weights in, ONNX out
BUDGETS = {"reference engine": (REFERENCE, 3200),   # what a student reads to learn the engine
           "fast paths": (FAST, 800),                        # 691 lines when this was set
           "GPU glue": (GPU_GLUE, 1000),                     # 573 lines when this was set
           "data and shapes": (DATA_AND_SHAPES, 1400),       # 1,233 lines when this was set
           "distributed": (DISTRIBUTED, 550),  # 292 lines; 504 with overlap and watchers
           "interop": (INTEROP, 600)}      # reading torch's files and writing ONNX, both optional


def python_files():
    for folder in ("minialex", "tests", "examples", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def files_of(part):
    """The .py files of a list of minialex/ files and folders (a folder ends with '/')."""
    for name in part:
        path = ROOT / "minialex" / name
        yield from sorted(path.rglob("*.py")) if name.endswith("/") else [path]


def line_count(path):
    return len(path.read_text().splitlines())


def test_no_line_is_longer_than_100_characters():
    long_lines = [f"{path.relative_to(ROOT)}:{number}"
                  for path in python_files()
                  for number, line in enumerate(path.read_text().splitlines(), 1)
                  if len(line) > MAX_LINE]
    assert not long_lines, f"lines over {MAX_LINE} characters: {long_lines}"


def test_every_file_of_the_engine_is_in_one_budget():
    counted = [path for part, _ in BUDGETS.values() for path in files_of(part)]
    assert all(path.exists() for path in counted), [p for p in counted if not p.exists()]
    assert len(counted) == len(set(counted)), "a file is counted in two budgets"
    every = set((ROOT / "minialex").rglob("*.py"))
    assert not every - set(counted), f"in no budget: {sorted(every - set(counted))}"


@pytest.mark.parametrize("part", BUDGETS)
def test_each_part_of_the_engine_stays_small_enough_to_read(part):
    files, budget = BUDGETS[part]
    lines = sum(line_count(path) for path in files_of(files))
    print(f"{part}: {lines} lines (budget {budget})")
    assert lines <= budget, f"{part}: {lines} lines, over the budget of {budget}"


# ---- the reference ops know nothing of the fast paths ----------------------------------------

REFERENCE_OPS = sorted((ROOT / "minialex" / "functions").glob("*.py")) + [
    ROOT / "minialex" / "optim.py"]
# In names and imports (not in docstrings or comments, which may point to the fast paths)
FORBIDDEN_WORDS = ("thread", "winograd", "cuda", "concurrent", "multiprocessing")
FORBIDDEN_MODULES = ("fast", "gpu", "cuda", "dispatch", "threading", "concurrent",
                     "threadpoolctl", "multiprocessing")


def names_and_imports(tree):
    """Every identifier used (names, attributes, definitions, arguments) and every module
    imported, by its dotted parts."""
    names, modules = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Import):
            modules.update(part for alias in node.names for part in alias.name.split("."))
        elif isinstance(node, ast.ImportFrom):
            modules.update((node.module or "").split("."))
            modules.update(alias.name for alias in node.names)  # from .. import cuda
    return names, modules - {""}


@pytest.mark.parametrize("path", REFERENCE_OPS, ids=lambda p: str(p.relative_to(ROOT)))
def test_reference_ops_use_no_threads_winograd_or_kernels(path):
    names, modules = names_and_imports(ast.parse(path.read_text()))
    uses = sorted(n for n in names | modules if any(w in n.lower() for w in FORBIDDEN_WORDS))
    assert not uses, f"{path.name} uses {uses}: that belongs in minialex/fast/ or gpu.py"
    imported = modules & set(FORBIDDEN_MODULES)
    if path.name == "optim.py":  # SGD.step asks dispatch.py, and nothing else, for a fast path
        imported -= {"dispatch"}
        assert {n for n in names if "fast" in n.lower()} <= {"fast_version"}
    assert not imported, f"{path.name} imports {sorted(imported)}"


def test_the_purity_check_can_fail():
    code = ("import threading\nfrom concurrent import futures\nfrom .. import cuda\n"
            "from ..fast.threads import run_in_threads\n"
            "def f(x):\n    return WinogradConv2d()(cuda.relu(x))\n")
    names, modules = names_and_imports(ast.parse(code))
    found = {n for n in names | modules if any(w in n.lower() for w in FORBIDDEN_WORDS)}
    assert {"threading", "concurrent", "cuda", "run_in_threads", "WinogradConv2d"} <= found
    assert {"fast", "cuda", "threading", "concurrent"} <= modules & set(FORBIDDEN_MODULES)


# ---- every file cited exists -----------------------------------------------------------------

# minialex/fast/conv.py, `kernels/pool.cu`, [tests/](tests/), examples/train_alexnet.py:123;
# not part of a longer path or a URL (.../blob/main/tests/...), nor a dotted module name
CITED = re.compile(r"(?<![\w./-])((?:minialex|kernels|tests|benchmarks|examples)/[\w./-]*)")


# A placeholder such as kernels/NAME.cu: an upper-case name that is not a document (.md)
PLACEHOLDER = re.compile(r"/[A-Z][A-Z0-9_]*(\.(?!md\b)\w+)?(/|$)")
# Paths that exist in an installed wheel, not in a checkout (pyproject.toml's package-dir)
ONLY_IN_A_WHEEL = {"minialex/kernels", "minialex/kernels/"}


def cited_paths(text):
    """The paths cited in a text, without trailing punctuation; a glob or a brace list
    (minialex/fast/*.py, minialex/{nn,optim}.py) is cut to the folder before it."""
    for match in CITED.finditer(text):
        path = match.group(1).rstrip(".-")
        if not PLACEHOLDER.search(path) and path not in ONLY_IN_A_WHEEL:
            yield path


def citing_files():
    return [path for path in python_files() if path.name != "test_style.py"] + [
        ROOT / "README.md"]


def missing_citations_in(text):
    return [cited for cited in cited_paths(text) if not (ROOT / cited).exists()]


def missing_citations(paths):
    return [f"{path.relative_to(ROOT)}:{number}: {cited}" for path in paths
            for number, line in enumerate(path.read_text().splitlines(), 1)
            for cited in missing_citations_in(line)]


def test_the_citation_scan_reads_paths_as_written():
    text = ("see minialex/fast/conv.py, `kernels/pool.cu` and [the shim](tests/kernel_shim/). "
            "Run examples/train_alexnet.py. minialex/{nn,optim}.py; minialex/fast/*.py; "
            "https://github.com/a/b/blob/main/tests/x.py; minialex.functions.conv; "
            "each kernels/NAME.cu; minialex/ALEXNET.md; kernels/README.md.")
    assert list(cited_paths(text)) == [
        "minialex/fast/conv.py", "kernels/pool.cu", "tests/kernel_shim/",
        "examples/train_alexnet.py", "minialex/", "minialex/fast/", "minialex/ALEXNET.md",
        "kernels/README.md"]
    assert missing_citations_in("tests/no_such_test.py, minialex/ALEXNET.md") == [
        "tests/no_such_test.py"]


@pytest.mark.parametrize("where", ["code", "README.md"])
def test_every_file_cited_exists(where):
    paths = [p for p in citing_files() if (p.name == "README.md") == (where == "README.md")]
    missing = missing_citations(paths)
    assert not missing, "cited but not there:\n" + "\n".join(missing)
