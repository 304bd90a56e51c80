"""Gradients averaged while backward runs (minialex.distributed.overlap_gradients): the same
averages as one Allreduce after backward, buckets in backward's order, each sent before backward
ends, and a clear error for a parameter used twice. Run with mpiexec -n 2 where mpi4py is
installed; the bucket layout needs no MPI."""
import importlib.util
import json
import subprocess
import sys

import pytest

from minialex import nn
from minialex.distributed import buckets_of, overlap_gradients
from test_distributed import ENV, ROOT, mpiexec

HAS_MPI = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason="mpi4py is not installed "
                               "(pip install -e '.[distributed]')")


def sizes(buckets):
    return [[p.size for p in bucket] for bucket in buckets]


def test_buckets_follow_backwards_order_and_a_large_parameter_travels_alone():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 300), nn.ReLU(),
                          nn.Linear(300, 4))
    # float32: 4 bytes a value; buckets of 1,000 bytes = 250 values
    # 1,200 and 6,000 values go alone; 300 values fill a bucket; 20 + 200 values share one
    assert sizes(buckets_of(list(model.parameters()), 1000)) == [
        [4], [1200], [300], [6000], [20, 200]]
    assert sizes(buckets_of(list(model.parameters()), 10**9)) == [
        [4, 1200, 300, 6000, 20, 200]]
    frozen = list(model.parameters())
    frozen[0].requires_grad = False  # no gradient: not sent
    assert sizes(buckets_of(frozen, 10**9)) == [[4, 1200, 300, 6000, 20]]


@pytest.mark.parametrize("bucket_bytes", [0, -5, 2.5, True, "25MB"])
def test_a_bucket_size_that_is_no_positive_int_is_refused(bucket_bytes):
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        overlap_gradients(nn.Linear(2, 2), bucket_bytes=bucket_bytes)


SCRIPT = r'''
import json
import sys
import numpy as np
import minialex as mx
import minialex.functional as F
from minialex import distributed as dist, nn

dist.init()
rank = dist.rank()


def build():
    mx.random.manual_seed(0)  # the same weights on both ranks
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 300), nn.ReLU(),
                         nn.Linear(300, 5))


def local_gradients(model, step):
    rng = np.random.default_rng(100 * step + rank)  # each rank its own data
    x = mx.tensor(rng.standard_normal((6, 12)).astype(np.float32))
    labels = rng.integers(0, 5, 6)
    for p in model.parameters():
        p.grad = None
    F.cross_entropy(model(x), labels).backward()


thread = sys.argv[1] == "thread"
report = {"steps": []}
plain = build()
overlapped = dist.overlap_gradients(build(), bucket_bytes=1000, thread=thread)
buckets = overlapped._gradient_buckets
first = overlapped[0]
others = sum(1 for bucket in buckets.buckets
             if not any(p is first.weight or p is first.bias for p in bucket))
first.weight.register_post_accumulate_grad_hook(lambda p: report.setdefault("sent", []).append(
    (buckets.sent, others)))
for step in range(3):
    local_gradients(plain, step)
    mine = [p.grad.copy() for p in plain.parameters()]
    everyone = dist._comm.allgather(mine)
    dist.average_gradients(plain)
    local_gradients(overlapped, step)
    dist.average_gradients(overlapped)
    expected = [(a + b) / np.float32(2) for a, b in zip(*everyone)]  # the formula, 2 ranks
    report["steps"].append({
        "overlapped_equals_formula": all(np.array_equal(p.grad, e) for p, e in
                                         zip(overlapped.parameters(), expected)),
        "plain_equals_formula": all(np.array_equal(p.grad, e) for p, e in
                                    zip(plain.parameters(), expected)),
        "ranks_differed": any(not np.array_equal(a, b) for a, b in zip(*everyone))})

twice = dist.overlap_gradients(nn.Sequential(nn.Linear(3, 3)), bucket_bytes=1000,
                               thread=thread)
x = mx.tensor(np.ones((2, 3), np.float32))
try:
    (twice(twice(x)).sum()).backward()
except dist.DistributedError as error:
    report["twice"] = str(error)
if rank == 0:
    print("REPORT " + json.dumps(report))
'''


@needs_mpi
@pytest.mark.parametrize("sender", ["thread", "inline"])
def test_overlapped_averages_are_the_formulas_and_leave_during_backward(sender, tmp_path):
    script = tmp_path / "overlap.py"
    script.write_text(SCRIPT)
    result = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(script),
                             sender], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])
    for step in report["steps"]:
        assert step["ranks_differed"]  # else the average would prove nothing
        assert step["overlapped_equals_formula"] and step["plain_equals_formula"]
    # when the first layer's weight gradient arrives (last of backward), every bucket but its
    # own has been sent: the classifier's sums were on their way while backward went on
    sent, others = report["sent"][0]
    assert others >= 3 and report["sent"] == [[others, others]] * 3
    assert "second gradient before average_gradients" in report["twice"]
