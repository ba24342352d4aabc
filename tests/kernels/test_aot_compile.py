"""Ahead-of-time GPU compilation of every launched Triton kernel (no GPU needed).

Every kernel the ops launch (discovered by recording the launches of every op's Triton path,
see ``benchmarks/gpu/aot_compile.py``) is compiled for sm_90, sm_80 (and sm_100 when this
Triton has its ptxas) with every autotune config, the runtime's specialization and the GPU
path's constexprs. Fails on a compile error, shared memory over the target's per-block limit,
register spills, a kernel no driver launches, or a tl.dot kernel without wgmma on sm_90.

To keep CI short each (kernel, config, target) is compiled for one dtype, rotating, so every
dtype still meets every kernel and target; ``python benchmarks/aot_report.py`` compiles the
full cross product. Compiles run in subprocesses without ``TRITON_INTERPRET`` (the tests run
with it set) on all cores; Triton's cache makes reruns fast.
"""
from __future__ import annotations

import collections
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

triton = pytest.importorskip("triton")
aot = pytest.importorskip("benchmarks.gpu.aot_compile")


@pytest.fixture(scope="module")
def compiled():
    t0 = time.perf_counter()
    recorded = aot.record_launches()
    jobs = aot.plan_jobs(recorded, mode="ci")
    results = aot.compile_jobs(jobs)
    wall = time.perf_counter() - t0
    print(f"\nAOT: {len(jobs)} compiles of {len(recorded['kernels_launched'])} kernels "
          f"in {wall:.1f} s (triton {triton.__version__})")
    return recorded, jobs, results


def _name(r):
    return f"{r['kernel']} {r['dtype']} {r['target']} {r['config']}"


def test_every_kernel_is_launched_by_a_driver(compiled):
    recorded, _, _ = compiled
    assert recorded["kernels_launched"], "no Triton launch was recorded"
    assert not recorded["never_launched"], (
        "Triton kernels that no op driver launches (add the op to _drivers in "
        f"benchmarks/gpu/aot_compile.py): {recorded['never_launched']}")


def test_every_kernel_config_target_compiles_within_limits(compiled):
    """Compile errors fail on every target. Shared memory over the limit and register spills fail
    too, except on the targets named in $RGBD_AOT_RESOURCES_REPORT_ONLY (comma-separated, e.g.
    "sm_80" for the Triton 3.6 run: its older ptxas spills in dgrad on sm_80 for every tile
    tried, and an over-limit config is skipped by the autotuner there): those are printed."""
    _, jobs, results = compiled
    assert len(results) == len(jobs)
    report_only = {t for t in os.environ.get("RGBD_AOT_RESOURCES_REPORT_ONLY", "").split(",") if t}
    errors = [f"{_name(r)}: {r['error']}" for r in results if not r["compiled"]]
    assert not errors, "\n".join(errors)
    bad = [f"{_name(r)}: {r['error']}" for r in results
           if not r["ok"] and r["target"] not in report_only]
    assert not bad, "\n".join(bad)
    for r in results:
        assert r["registers"] is not None, _name(r)
        if r["target"] not in report_only:
            assert r["shared_bytes"] <= r["shared_limit"] and r["spills"] == 0, _name(r)
    reported = [f"{_name(r)}: {r['error']}" for r in results if not r["ok"]]
    if reported:
        print(f"\nresource limits exceeded on report-only targets {sorted(report_only)}:\n"
              + "\n".join(reported))


def test_coverage_every_kernel_config_target_and_dtype(compiled):
    recorded, jobs, results = compiled
    caps = aot.supported_capabilities()
    assert {90, 80} <= set(caps)
    kernels = {f"{j['module']}.{j['kernel']}" for j in jobs}
    assert kernels == set(recorded["kernels_launched"])
    # every autotune config of every kernel on every target
    n_configs = collections.Counter()
    seen = set()
    for j in jobs:
        seen.add((j["module"], j["kernel"], j["config_index"], j["capability"]))
        n_configs[(j["module"], j["kernel"])] = max(n_configs[(j["module"], j["kernel"])],
                                                    j["config_index"] + 1)
    for (mod, kern), n in n_configs.items():
        for i in range(n):
            for cap in caps:
                assert (mod, kern, i, cap) in seen, (kern, i, cap)
    # every dtype each kernel was launched with, on every target
    launched = {(r["module"], r["kernel"], r["dtype"]) for r in recorded["launches"]}
    compiled_for = {(r["module"], r["kernel"], r["dtype"], r["target"]) for r in results}
    for mod, kern, dt in launched:
        for cap in caps:
            assert (mod, kern, dt, aot.TARGET_NAMES[cap]) in compiled_for, (kern, dt, cap)


def test_tl_dot_kernels_use_wgmma_on_sm90(compiled):
    """A tl.dot tile of >= 64 rows issued by whole warpgroups must become wgmma on Hopper."""
    _, _, results = compiled
    dots = [r for r in results if r["target"] == "sm_90" and r["dot_tile"]]
    assert dots, "no tl.dot kernel found"
    slow = [_name(r) for r in dots
            if r["dot_tile"][0] >= 64 and r["num_warps"] % 4 == 0 and r["tensor_core"] != "wgmma"]
    assert not slow, "tl.dot without wgmma on sm_90:\n" + "\n".join(slow)


def _key(r):
    return (r["kernel"], r["dtype"], r["target"], json.dumps(r["config"], sort_keys=True),
            json.dumps(r["constexprs"], sort_keys=True))


def test_committed_static_profile_is_current(compiled):
    """benchmarks/results/aot-sm90.json holds an ok entry for every kernel, config, target and
    dtype compiled here: regenerate it (python benchmarks/aot_report.py) when kernels change."""
    _, jobs, results = compiled
    path = REPO / "benchmarks" / "results" / "aot-sm90.json"
    committed = {_key(r): r for r in json.loads(path.read_text())}
    caps = {aot.TARGET_NAMES[c] for c in aot.supported_capabilities()}
    missing = [_name(r) for r in results if r["target"] in caps and _key(r) not in committed]
    assert not missing, (f"{path.name} lacks {len(missing)} of the compiles done here (run "
                         "python benchmarks/aot_report.py):\n" + "\n".join(missing[:20]))
    assert all(r["ok"] for r in committed.values()), "the committed profile has failures"


# ---------------------------------------------------------------------------- the checks can fail

_TOY = '''
import triton
import triton.language as tl


@triton.jit
def big_tile_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)
'''


def _toy_job(tmp_path, monkeypatch, config, cap=90):
    (tmp_path / "aot_toy_kernels.py").write_text(textwrap.dedent(_TOY))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    params = {"a_ptr": {"tensor": "float32", "aligned": True},
              "b_ptr": {"tensor": "float32", "aligned": True},
              "c_ptr": {"tensor": "float32", "aligned": True}, "K": 4096}
    blocks = {k: config.pop(k) for k in ("BM", "BN", "BK")}
    params.update(blocks)
    return {"module": "aot_toy_kernels", "attr": "big_tile_kernel", "kernel": "big_tile_kernel",
            "op": "toy", "dtype": "float32", "params": params, "constexprs": blocks,
            "tensor_dtypes": ["float32"], "config": config, "capability": cap,
            "target": aot.TARGET_NAMES[cap]}


def test_shared_memory_over_the_limit_fails(tmp_path, monkeypatch):
    job = _toy_job(tmp_path, monkeypatch,
                   {"BM": 256, "BN": 256, "BK": 128, "num_warps": 8, "num_stages": 4})
    (res,) = aot.compile_jobs([job], workers=1)
    assert not res["ok"] and "shared memory" in res["error"], res
    assert res["shared_bytes"] > aot.SHARED_LIMIT[90]


def test_register_spills_fail_and_good_tiles_pass(tmp_path, monkeypatch):
    spill = _toy_job(tmp_path, monkeypatch,
                     {"BM": 128, "BN": 256, "BK": 32, "num_warps": 1, "num_stages": 1}, cap=80)
    good = _toy_job(tmp_path, monkeypatch,
                    {"BM": 128, "BN": 128, "BK": 32, "num_warps": 4, "num_stages": 3})
    res_spill, res_good = aot.compile_jobs([spill, good], workers=1)
    assert not res_spill["ok"] and "spill" in res_spill["error"], res_spill
    assert res_good["ok"], res_good
    assert res_good["tensor_core"] == "wgmma" and res_good["dot_tile"] == [128, 128, 32]
    assert res_good["registers"] > 0 and res_good["spills"] == 0


def test_ptx_and_ptxas_parsers():
    ptx = """
    @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
    ld.global.b32 %r5, [ %rd2 + 0 ];
    cp.async.cg.shared.global [ %r6 + 0 ], [ %rd3 + 0 ], 0x10, %r7;
    cp.async.cg.shared.global [ %r6 + 0 ], [ %rd3 + 0 ], 16, %r7;
    mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...};
    """
    facts = aot.analyse_ptx(ptx)
    assert facts["tensor_core"] == "mma"
    assert facts["ld_global"] == {"v4": 1, "v2": 0, "scalar": 1}
    assert facts["pipelining"] == "cp.async" and facts["cp_async"] == 2
    assert aot.analyse_ptx("wgmma.mma_async.sync.aligned")["tensor_core"] == "wgmma"
    log = ("ptxas info    : Used 168 registers, used 1 barriers\n"
           "ptxas info    : 8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads\n")
    assert aot.parse_ptxas(log) == {"registers": 168, "spill_stores": 12, "spill_loads": 4,
                                    "stack_bytes": 8}
    ttir = "%5 = tt.dot %3, %4, %2 : tensor<128x32xbf16> * tensor<32x64xbf16> -> tensor<128x64xf32>"
    assert aot.analyse_ttir(ttir) == {"dot_tile": [128, 64, 32], "dot_dtype": "bf16",
                                      "arithmetic_intensity": round(2 * 128 * 64 * 32
                                                                    / ((128 * 32 + 32 * 64) * 2), 2)}
