"""The visible line budget (STYLE.md, item 15): students read this code on laptops."""
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_LINE = 100
ENGINE_BUDGET = 5000  # lines of minialex/, comments and docstrings included


def python_files():
    for folder in ("minialex", "tests", "examples", "benchmarks"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_line_is_longer_than_100_characters():
    long_lines = [f"{path.relative_to(ROOT)}:{number}"
                  for path in python_files()
                  for number, line in enumerate(path.read_text().splitlines(), 1)
                  if len(line) > MAX_LINE]
    assert not long_lines, f"lines over {MAX_LINE} characters: {long_lines}"


def test_the_engine_stays_small_enough_to_read():
    lines = sum(len(p.read_text().splitlines()) for p in (ROOT / "minialex").rglob("*.py"))
    print(f"minialex/ has {lines} lines (budget {ENGINE_BUDGET})")
    assert lines <= ENGINE_BUDGET
