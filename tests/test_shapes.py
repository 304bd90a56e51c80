"""minialex.shapes: the output-size formula worked out layer by layer, its explanations, the
parameter counts, the spec parser and the command line.

Expected sizes come from counting windows one by one (the definition), expected parameter
totals from ALEXNET.md, and the built-in networks are checked against a forward pass of the
real models.
"""
import pathlib
import re
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from minialex import shapes
from minialex.shapes import (Layer, builtin, check_against_model, explain, input_sizes_giving,
                             output_size, parse_spec, render, suggest_fixes, total_parameters)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def windows_that_fit(W, F, S, P, ceil_mode=False):
    """Count the windows by walking them: start at the left edge of the padded input, step by
    S while a whole window fits. Ceil mode adds one partial window when pixels are left over,
    unless it would start in the right padding."""
    starts = []
    start = 0
    while start + F <= W + 2 * P:
        starts.append(start)
        start += S
    if ceil_mode and starts and starts[-1] + F < W + 2 * P and starts[-1] + S < W + P:
        starts.append(starts[-1] + S)
    return len(starts) if starts else None


def row_named(rows, name):
    return next(row for row in rows if row.name == name)


# -- the formula ------------------------------------------------------------------------------

@given(W=st.integers(1, 60), F=st.integers(1, 12), S=st.integers(1, 6), P=st.integers(0, 6))
def test_conv_output_size_counts_the_windows(W, F, S, P):
    assert output_size(Layer("conv", units=4, kernel=F, stride=S, padding=P), W) == \
        windows_that_fit(W, F, S, P)


@given(W=st.integers(1, 60), F=st.integers(1, 12), S=st.integers(1, 6), data=st.data(),
       ceil_mode=st.booleans())
def test_pool_output_size_counts_the_windows(W, F, S, data, ceil_mode):
    P = data.draw(st.integers(0, F // 2))
    layer = Layer("pool", kernel=F, stride=S, padding=P, ceil_mode=ceil_mode)
    assert output_size(layer, W) == windows_that_fit(W, F, S, P, ceil_mode)


@pytest.mark.parametrize("spec, formula, shape", [
    ("conv 96 k11 s4 p0", "(227 - 11 + 2*0)/4 + 1 = 55", (55, 55, 96)),
    ("conv 64 k11 s4 p2", "(227 - 11 + 2*2)/4 + 1 = 56", (56, 56, 64)),
    ("pool k3 s2", "(227 - 3 + 2*0)/2 + 1 = 113", (113, 113, 3)),
    ("pool k3 s4", "(227 - 3 + 2*0)/4 + 1 = 57", (57, 57, 3)),
    ("pool k2 s3", "(227 - 2 + 2*0)/3 + 1 = 76", (76, 76, 3)),
    ("conv 8 k5 s3 p1", "(227 - 5 + 2*1)/3 + 1 = 75.67 -> 75", (75, 75, 8)),
    ("pool k3 s2 p1 ceil", "(227 - 3 + 2*1)/2 + 1 = 114", (114, 114, 3)),
])
def test_formula_worked_out_by_hand(spec, formula, shape):
    row = explain(parse_spec("input 227x3; " + spec))[1]
    assert (row.formula, row.shape) == (formula, shape)


@pytest.mark.parametrize("size, spec, formula, out", [
    (224, "conv 96 k11 s4 p0", "(224 - 11 + 2*0)/4 + 1 = 54.25 -> 54", 54),
    (224, "conv 64 k11 s4 p2", "(224 - 11 + 2*2)/4 + 1 = 55.25 -> 55", 55),
    (23, "pool k3 s3", "(23 - 3 + 2*0)/3 + 1 = 7.67 -> 7", 7),
    (23, "pool k3 s3 ceil", "(23 - 3 + 2*0)/3 + 1 = 7.67 -> 8", 8),
    (55, "pool k3 s4", "(55 - 3 + 2*0)/4 + 1 = 14", 14),
])
def test_formula_on_sizes_from_the_notes(size, spec, formula, out):
    row = explain(parse_spec(f"input {size}x3; {spec}"))[1]
    assert (row.formula, row.computed) == (formula, out)


# -- the explanations -------------------------------------------------------------------------

def test_a_size_that_is_not_an_integer_is_explained():
    row = explain(parse_spec("input 224x3; conv 96 k11 s4 p0"))[1]
    note = " ".join(row.notes)
    for words in ("Not an integer: 213/4 leaves 1 over", "round down, to 54",
                  "cuda-convnet rounded up, to 55", "223 (giving 54)", "227 (giving 55)",
                  "no padding makes it exact"):
        assert words in note
    pool = explain(parse_spec("input 10x3; pool k3 s3"))[1]
    assert "ceil mode gives 4" in pool.notes[0] and "with padding 1 (giving 4)" in pool.notes[0]


@given(W=st.integers(1, 80), F=st.integers(1, 11), S=st.integers(2, 6), P=st.integers(0, 5))
def test_every_exact_size_the_note_suggests_is_exact(W, F, S, P):
    row = explain([Layer("input", size=W, units=3),
                   Layer("conv", units=2, kernel=F, stride=S, padding=P)])[1]
    if row.computed is None or (W - F + 2 * P) % S == 0:
        assert not any("Not an integer" in note for note in row.notes)
        return
    note = next(note for note in row.notes if "Not an integer" in note)
    inputs = re.findall(r"(\d+) \(giving (\d+)\)", note.split("padding")[0])
    assert inputs
    for width, out in inputs:
        assert (int(width) - F + 2 * P) % S == 0
        assert windows_that_fit(int(width), F, S, P) == int(out)
    padding = re.search(r"with padding (\d+) \(giving (\d+)\)", note)
    if padding:
        p, out = map(int, padding.groups())
        assert (W - F + 2 * p) % S == 0 and windows_that_fit(W, F, S, p) == out


def test_a_window_larger_than_its_input_cannot_fit():
    rows = explain(parse_spec("input 5x3; conv 4 k3; pool k7; fc 10"))
    assert rows[-1].name == "pool1" and rows[-1].shape == ()
    assert "Cannot fit: the 7x7 window is larger than the 3x3 input" in rows[-1].notes[0]
    assert "cannot be computed" in rows[-1].notes[-1]
    assert render(rows).splitlines()[-1].startswith("total so far: ")


def test_seed000_shows_both_inconsistent_strides():
    rows = explain(builtin("seed000"))
    wrong = [row for row in rows if row.mismatch]
    assert [row.name for row in wrong] == ["pool1", "pool2"]
    pool1, pool2 = (" ".join(row.notes) for row in wrong)
    assert "the note says 27, but (55 - 3 + 2*0)/4 + 1 = 14" in pool1
    assert "the note says 11, but (23 - 3 + 2*0)/3 + 1 = 7.67, rounded to 7" in pool2
    assert "It would be 27 with stride 2" in pool1 and "It would be 11 with stride 2" in pool2
    assert "go on from the note's 27x27" in pool1
    # going on from the claimed sizes, every other size the note states follows
    assert [row.computed for row in rows if row.layer and row.layer.claimed] == \
        [55, 14, 23, 7, 9, 7, 5, 2]
    assert row_named(rows, "flatten").shape == (1024,)
    assert "With pool1 stride 2 and pool2 stride 2, every size in the note follows" in \
        render(rows)


def test_seed000_with_stride_2_has_no_mismatch():
    spec = shapes.BUILTIN["seed000"].replace("k3 s4", "k3 s2").replace("k3 s3", "k3 s2")
    rows = explain(parse_spec(spec), follow="computed")
    assert not any(row.mismatch for row in rows)
    assert [row.computed for row in rows if row.kind in ("conv", "pool")] == \
        [55, 27, 23, 11, 9, 7, 5, 2]


def test_following_the_computed_sizes_of_seed000_runs_out_of_image():
    rows = explain(builtin("seed000"), follow="computed")
    assert [row.computed for row in rows[1:]] == [55, 14, 10, 3, 1, None]
    assert "go on from the computed 14x14" in " ".join(row_named(rows, "pool1").notes)
    assert "Cannot fit" in " ".join(rows[-1].notes)


def test_the_paper_as_printed_needs_227_or_padding_2():
    rows = explain(builtin("paper224"))
    conv1 = row_named(rows, "conv1")
    assert [row.name for row in rows if row.mismatch] == ["conv1"]
    assert "padding 2 (55.25 rounded down)" in conv1.notes[-1]
    assert "an input of 227 to 230 instead of 224" in conv1.notes[-1]
    assert "With conv1 padding 2, every size in the note follows" in render(rows)


@given(W=st.integers(1, 60), F=st.integers(1, 11), S=st.integers(1, 5), data=st.data(),
       pool=st.booleans(), wanted=st.integers(1, 40))
def test_every_suggested_fix_gives_the_wanted_size(W, F, S, data, pool, wanted):
    P = data.draw(st.integers(0, F // 2))
    layer = Layer("pool" if pool else "conv", units=2, kernel=F, stride=S, padding=P)
    fixes = suggest_fixes(layer, W, wanted)
    for _, changed in fixes:
        assert output_size(changed, W) == wanted
    settings = [setting.split()[0] for setting, _ in fixes]
    assert len(settings) == len(set(settings))
    stride_works = any(windows_that_fit(W, F, s, P) == wanted for s in range(1, F + 1) if s != S)
    assert ("stride" in settings) == stride_works
    sizes = input_sizes_giving(layer, wanted)
    for width in sizes:
        assert windows_that_fit(width, F, S, P, False) == output_size(layer, width) == wanted
    if sizes and sizes[0] > 1:  # an input is at least 1 wide: 0 is no smaller size to try
        assert output_size(layer, sizes[0] - 1) != wanted
    if sizes:
        assert output_size(layer, sizes[-1] + 1) != wanted


# -- parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, total", [
    ("paper", 60_965_224), ("seed", 62_378_344), ("torchvision", 61_100_840),
    ("paper224", 60_965_224), ("seed000", 28_823_912)])
def test_parameter_totals_match_alexnet_md(name, total):
    assert total_parameters(explain(builtin(name))) == total
    assert f"total: {total:,} parameters" in render(explain(builtin(name)))


def test_seed_parameters_per_layer_match_seed_003():
    rows = explain(builtin("seed"))
    assert [row.params for row in rows if row.kind in ("conv", "fc")] == [
        34_944, 614_656, 885_120, 1_327_488, 884_992, 37_752_832, 16_781_312, 4_097_000]


def test_seed000_without_biases_is_the_notes_own_sum():
    rows = explain(builtin("seed000"))
    # the note's per-layer counts (weights only): 34,848 + 614,400 + ... + 4,096,000
    note = [34_848, 614_400, 884_736, 1_327_104, 884_736, 4_194_304, 16_777_216, 4_096_000]
    assert [row.weights for row in rows if row.kind in ("conv", "fc")] == note
    assert sum(note) == 28_813_344


def test_groups_divide_the_weights():
    rows = explain(parse_spec("input 27x96; conv 256 k5 p2 g2; conv 256 k5 p2"))
    assert (rows[1].weights, rows[2].weights) == (256 * 48 * 25, 256 * 256 * 25)


# -- against the real engine -----------------------------------------------------------------

@pytest.mark.parametrize("variant", ["paper", "seed", "torchvision"])
def test_sizes_and_parameters_agree_with_the_model(variant):
    assert check_against_model(variant) == []


def test_the_model_check_can_fail(monkeypatch):
    spec = shapes.BUILTIN["seed"].replace("conv 256 k5 s1 p2", "conv 256 k5 s1 p1")
    monkeypatch.setitem(shapes.BUILTIN, "seed", spec)
    problems = check_against_model("seed")
    assert problems and problems[0].startswith("conv2:")


# -- the spec --------------------------------------------------------------------------------

def test_parse_spec_defaults_comments_and_forms():
    layers = parse_spec("""INPUT 227   # three channels by default
        conv 96 k11 s4; POOL k3   # stride defaults to the window
        conv 256 =27 k5 p2 g2; pool k3 s2 p1 ceil; lrn; avgpool 6; fc 10""")
    assert layers[0] == Layer("input", size=227, units=3)
    assert layers[1] == Layer("conv", units=96, kernel=11, stride=4, padding=0, groups=1)
    assert layers[2].stride == 3
    assert layers[3] == Layer("conv", units=256, kernel=5, padding=2, groups=2, claimed=27)
    assert layers[4] == Layer("pool", kernel=3, stride=2, padding=1, ceil_mode=True)
    assert [layer.kind for layer in layers[5:]] == ["lrn", "avgpool", "fc"]
    assert parse_spec("input 9x9x4")[0] == parse_spec("input 9x4")[0] == Layer(
        "input", size=9, units=4)


def test_avgpool_explains_its_bins():
    rows = explain(parse_spec("input 13x4; avgpool 6; avgpool 6"))
    assert rows[1].formula == "13 into 6 bins of 3 pixels" and rows[1].shape == (6, 6, 4)
    assert rows[2].formula == "identity: every bin is 1 pixel"


@pytest.mark.parametrize("spec, match", [
    ("  # nothing\n ; ", "the spec is empty"),
    ("input 227x3; cnv 96 k11", r"item 2 \('cnv 96 k11'\): unknown layer 'cnv'"),
    ("input 227x3; conv k11", "expected a number after 'conv'"),
    ("input 227x3; conv 96", r"item 2 .*no window size kF \(e.g. k3\)"),
    ("input 227x3; conv 96 k11 s0", "stride must be a whole number of at least 1; got 0"),
    ("input 227x3; conv 96 k11 x3", "unknown option 'x3'; usage: conv FILTERS kF"),
    ("input 227x3; conv 96 k11 sx", "'sx' is not 's' and a whole number"),
    ("input 227x3; conv 96 k11 p-1", "'p-1' is not 'p' and a whole number"),
    ("input 227x3; conv 96 k11 s2 s3", "stride is given twice"),
    ("input 227x3; pool k3 p2", r"padding must be at most half the window \(k3 allows p0"),
    ("input 227x3; conv 96 k11 g5", "96 filters cannot be split into 5 groups"),
    ("input 227x3; conv 96 k11 ceil", "unknown option 'ceil'"),
    ("input 227x3; lrn 5", "unknown option '5'; usage: lrn"),
    ("input 227x3; fc 10 =3", "unknown option '=3'; usage: fc UNITS"),
    ("input 227x3; conv 96 k3 =0", "a claimed size must be at least 1"),
    ("input 227x224x3", "only square inputs; got 227x224"),
    ("input two", "expected 'input SIZExC'"),
    ("input 0x3", "size must be a whole number of at least 1; got 0"),
    ("conv 96 k11", r"item 1 .*a network starts with its input"),
    ("input 227x3; input 227x3", "item 2 .*only the first item can be the input"),
    ("input 227x3; fc 10; conv 8 k3", r"item 3 .*a conv cannot follow fc"),
])
def test_parse_spec_errors_name_the_item(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_other_errors():
    with pytest.raises(ValueError, match="conv1: 3 input channels cannot be split into 2 groups"):
        explain(parse_spec("input 227x3; conv 96 k11 g2"))
    with pytest.raises(ValueError, match="follow must be 'claimed' or 'computed'; got 'note'"):
        explain(builtin("seed"), follow="note")
    with pytest.raises(ValueError, match="explain: no layers"):
        explain([])
    with pytest.raises(ValueError, match="only conv and pool layers can carry a claimed size"):
        Layer("lrn", claimed=3)
    with pytest.raises(ValueError, match="unknown layer kind 'dense'"):
        Layer("dense", units=3)
    with pytest.raises(ValueError, match="unknown network 'alexnet'"):
        builtin("alexnet")
    with pytest.raises(ValueError, match="variant must be one of"):
        check_against_model("seed000")


# -- the output and the command line ---------------------------------------------------------

@pytest.mark.parametrize("name", list(shapes.BUILTIN))
@pytest.mark.parametrize("follow", ["claimed", "computed"])
def test_every_line_fits_in_100_characters(name, follow):
    text = render(explain(builtin(name), follow), shapes.TITLES[name], show_params=True)
    assert max(len(line) for line in text.splitlines()) <= 100


def run_cli(*args, script=None):
    command = [sys.executable] + ([str(ROOT / script)] if script else ["-m", "minialex.shapes"])
    return subprocess.run(command + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_cli_paper():
    result = run_cli("paper")
    assert result.returncode == 0, result.stderr
    assert "(227 - 11 + 2*0)/4 + 1 = 55" in result.stdout and "60,965,224" in result.stdout


def test_cli_seed000_through_the_example_script():
    result = run_cli("seed000", script="examples/shapes.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MISMATCH") == 2 and "28,823,912" in result.stdout


def test_cli_spec_file_params_and_follow(tmp_path):
    path = tmp_path / "net.txt"
    path.write_text("input 227x3\nconv 96 k11 s4 =55\npool k3 s4 =27\nconv 8 k3\n")
    result = run_cli("--file", str(path), "--params", "--follow", "computed")
    assert result.returncode == 0, result.stderr
    assert "params: 96 filters * 3 channels * 11*11 + 96 biases = 34,944" in result.stdout
    assert "go on from the computed 14x14" in result.stdout


@pytest.mark.parametrize("args, match", [
    (["--spec", "input 227x3; conv 96 k11 s0"], r"^error: shapes: item 2 .*stride must be"),
    (["--file", "/no/such/spec.txt"], r"^error: shapes: cannot read the spec file .*No such"),
    ([], "give exactly one network"),
    (["paper", "--spec", "input 9x3"], "give exactly one network"),
    (["seed000", "--check"], "--check compares with minialex.models.alexnet"),
    (["alexnet"], "invalid choice: 'alexnet'"),
])
def test_cli_errors(args, match):
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert re.search(match, result.stderr.strip().splitlines()[-1])


def test_cli_check(capsys):
    assert shapes.main(["seed", "--check"]) == 0
    assert "minialex.models.alexnet('seed') agrees: 12 layer shapes and 62,378,344 parameters" \
        in capsys.readouterr().out
