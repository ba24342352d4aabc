"""Importing rgbd_kernels and running CPU ops stays light: at most 30 MiB resident over
``import torch`` (every data-loader worker pays it), because nothing imports torch._dynamo,
sympy or triton until a user compiles. Measured in fresh subprocesses."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

BUDGET_MIB = 30.0

_OPS = """
import torch
import rgbd_kernels as rk
g = torch.Generator().manual_seed(0)
d = (torch.rand(2, 3, 8, 8, generator=g) + 0.1).requires_grad_()
out, shift, scale = rk.normalize_disparity(d)
out.sum().backward()
rk.depth_to_disparity(torch.rand(2, 3, 8, 8, generator=g) + 0.1)
x = torch.randn(1, 2, 3, 5, 5, generator=g, requires_grad=True)
rk.causal_conv3d(x, torch.randn(2, 2, 2, 3, 3, generator=g), padding=1).sum().backward()
v = torch.randn(2, 4, 3, 2, 2, generator=g, requires_grad=True)
x0, noise = torch.randn(2, 4, 3, 2, 2, generator=g), torch.randn(2, 4, 3, 2, 2, generator=g)
(rk.flow_matching_loss(v, x0, noise) * 2).backward()
rk.flow_interpolate(v, noise, rk.sample_timesteps(2, generator=g)).sum().backward()
q = torch.randn(1, 4, 2, 8, generator=g, requires_grad=True)
rk.attention(q, q, q).sum().backward()
"""

_MEASURE = """
import json, sys

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

import torch
base = rss_mib()
exec(compile(sys.argv[1], "ops", "exec"))
heavy = [m for m in ("torch._dynamo", "sympy", "triton", "torch._inductor") if m in sys.modules]
print(json.dumps({"added_mib": rss_mib() - base, "heavy": heavy}))
"""


def _run(code: str, extra: str = "") -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "RGBD_KERNELS_BACKEND")}  # the default CPU paths
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", _MEASURE + extra, code], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_import_and_cpu_ops_add_at_most_30_mib():
    result = _run(_OPS)
    assert result["heavy"] == [], f"a CPU op imported {result['heavy']}"
    assert result["added_mib"] <= BUDGET_MIB, (
        f"import rgbd_kernels + one call of each CPU op added {result['added_mib']:.1f} MiB "
        f"resident over import torch (budget {BUDGET_MIB} MiB)")


def test_ops_called_before_dynamo_import_still_compile():
    """An op used eagerly first (lazy disable wrapper) works under torch.compile afterwards."""
    code = _OPS + textwrap.dedent("""
        import torch._dynamo
        def f(d):
            return rk.normalize_disparity(d)[0] * 2 + 1
        d = torch.rand(2, 3, 8, 8) + 0.1
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(d), f(d))
        def h(v, x0, noise):
            return rk.flow_matching_loss(v, x0, noise) * 3
        v = torch.randn(2, 4, 3, 2, 2)
        assert torch.equal(torch.compile(h, fullgraph=True, backend="aot_eager")(v, x0, noise),
                           h(v, x0, noise))
    """)
    result = _run(code)
    assert "torch._dynamo" in result["heavy"]  # the check above really ran under Dynamo
