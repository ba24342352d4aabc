"""Ahead-of-time GPU compilation of every launched Triton kernel, on a machine without a GPU.

Three steps, each in its own process because ``triton.jit`` decides at import time whether a
kernel is interpreted (``TRITON_INTERPRET=1``) or compiled:

1. ``record`` (interpreter on): every public op of ``rgbd_kernels`` that has a Triton path runs
   on CPU tensors under ``use_backend("triton")`` for each float dtype, with the launchers told
   they are on a GPU (``triton_interpret()`` patched to False in ``rgbd_kernels._triton``
   modules, a fake device with 132 multiprocessors) so they pick the GPU path's constexprs and
   tiles. Each launch is recorded instead of executed: the launched object (an autotuner or a
   jit function, by module and attribute name) and its arguments (tensors as dtype and 16-byte
   alignment). Shapes are realistic (channel counts and plane sizes as in the models) because
   the runtime specializes on integers divisible by 16 and equal to 1.
2. ``plan`` (interpreter off): each recorded kernel is expanded over its autotune configs (the
   GPU list, read from the freshly imported module) and the targets.
3. ``compile`` (interpreter off): each job goes through the runtime's own binder (the same
   specialization a launch computes: types, divisibility-by-16 attributes, constexprs equal to
   1), ``triton.compile`` for the target, and ptxas ``-v`` (its log, or a run of Triton's
   bundled ptxas on the PTX on a cache hit). The result holds shared memory, registers, spills,
   the tensor-core instruction (wgmma / mma / none), global-load widths, pipelining (cp.async /
   TMA), and the arithmetic intensity of the tile read from the ``tt.dot`` in the TTIR.

Run ``python benchmarks/gpu/aot_compile.py --help``; ``tests/kernels/test_aot_compile.py`` and
``benchmarks/aot_report.py`` drive it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KERNEL_PACKAGE = "rgbd_kernels._triton"
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")

# Shared memory one block may use (bytes), per compute capability.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024, 100: 227 * 1024}
TARGET_NAMES = {80: "sm_80", 90: "sm_90", 100: "sm_100"}
FAKE_MULTIPROCESSORS = 132  # H100 / H200 SXM


def _env(interpret: bool) -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_step(step: str, payload, *, interpret: bool, extra: list[str] | None = None):
    """Run ``step`` of this file in a fresh interpreter (JSON in on stdin, JSON out on stdout)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), step, *(extra or [])]
    proc = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True,
                          env=_env(interpret), cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"aot_compile {step} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================ 1. record

def kernel_modules() -> list[str]:
    """Every module of the Triton kernel package."""
    pkg = importlib.import_module(KERNEL_PACKAGE)
    return sorted(f"{KERNEL_PACKAGE}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__))


def _drivers(torch, rk):
    """Callables running every public op that has a Triton path, forward and backward, for one
    dtype. Shapes are small enough for the host but shaped like real launches."""
    def conv_variants(dt):
        g = torch.Generator().manual_seed(0)

        def rnd(*shape):
            return torch.randn(*shape, generator=g).to(dt)
        c = 128
        w = rnd(c, c, 3, 3, 3).requires_grad_()
        b = rnd(c).requires_grad_()
        # channels-last (the fast layout), replicated head, bias + SiLU (saves the pre-activation)
        x = rnd(1, c, 5, 32, 32).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        y = rk.causal_conv3d(x, w, b, padding=1, activation="silu")
        y.backward(torch.ones_like(y))
        # NCDHW, zero head, no bias
        x2 = rnd(1, c, 5, 32, 32).requires_grad_()
        y2 = rk.causal_conv3d(x2, w, None, padding=1, time_pad="zeros")
        y2.backward(torch.ones_like(y2))
        # streaming: the second chunk reads its head from the cache
        x3 = rnd(1, c, 4, 32, 32).contiguous(memory_format=torch.channels_last_3d)
        _, cache = rk.causal_conv3d_stream(x3, w, b, padding=1)
        x4 = x3.clone().requires_grad_()
        y4, _ = rk.causal_conv3d_stream(x4, w, b, padding=1, cache=cache.detach().requires_grad_())
        y4.backward(torch.ones_like(y4))
        # temporal + spatial downsampling
        xd = rnd(1, c, 9, 32, 32).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
        yd = rk.causal_conv3d(xd, w, b, stride=(2, 2, 2), padding=1)
        yd.backward(torch.ones_like(yd))

    def flow(dt):
        g = torch.Generator().manual_seed(0)
        shape = (2, 16, 8, 32, 32)
        x0 = torch.randn(shape, generator=g).to(dt)
        noise = torch.randn(shape, generator=g).to(dt)
        rk.flow_interpolate(x0, noise, torch.rand(2, generator=g), check_range=False)
        rk.flow_interpolate(x0, noise, torch.rand(2, 8, generator=g), check_range=False)
        v = torch.randn(shape, generator=g).to(dt).requires_grad_()
        for mask, weight, red in [(None, None, "mean"),
                                  (torch.rand(2, 1, 8, 1, 1, generator=g) > 0.3,
                                   torch.rand(2, generator=g), "none"),
                                  (torch.rand(shape, generator=g) > 0.3, None, "sum")]:
            loss = rk.flow_matching_loss(v, x0, noise, weight=weight, mask=mask, reduction=red)
            loss.sum().backward()

    def disparity(dt):
        g = torch.Generator().manual_seed(0)
        depth = (torch.rand(2, 4, 64, 64, generator=g) * 10 + 0.1).to(dt)
        disp, valid = rk.depth_to_disparity(depth, 0.2, 8.0)
        d = disp.detach().clone().requires_grad_()
        for per in ("frame", "clip"):
            out, shift, scale = rk.normalize_disparity(d, valid, per=per)
            (out.sum() + shift.sum() + scale.sum()).backward()

    return {"causal_conv3d": conv_variants, "flow_matching": flow, "disparity": disparity}


def _serialize(value, torch):
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).replace("torch.", ""),
                "aligned": value.data_ptr() % 16 == 0}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a kernel argument of type {type(value).__name__}")


def record() -> dict:
    """Record every kernel launch of every op's Triton path (interpreter on, nothing runs)."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "record needs TRITON_INTERPRET=1"
    import torch
    import triton  # noqa: F401
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction

    import rgbd_kernels as rk
    from rgbd_kernels import BackendUnavailableError

    modules = {name: importlib.import_module(name) for name in kernel_modules()}
    launches: dict[str, dict] = {}
    unsupported: dict[str, str] = {}
    current = {"op": None, "dtype": None}

    def owner(obj):
        for mod_name, mod in modules.items():
            for attr, val in vars(mod).items():
                if val is obj:
                    return mod_name, attr
        raise RuntimeError(f"launched kernel {obj!r} is not a module attribute of {KERNEL_PACKAGE}")

    def base_fn(obj):
        while not isinstance(obj, InterpretedFunction):
            obj = obj.fn
        return obj

    def capture(obj, args, kwargs):
        mod_name, attr = owner(obj)
        fn = base_fn(obj)
        names = list(inspect.signature(fn.fn).parameters)
        params = dict(zip(names, args))
        options = {}
        for k, v in kwargs.items():
            (params if k in names else options)[k] = v
        params = {k: _serialize(v, torch) for k, v in params.items()}
        sig = inspect.signature(fn.fn).parameters
        constexprs = {k: v for k, v in params.items() if "constexpr" in str(sig[k].annotation)}
        rec = {"module": mod_name, "attr": attr, "kernel": fn.fn.__name__,
               "autotuned": isinstance(obj, Autotuner), "params": params, "options": options,
               "constexprs": constexprs, "dtype": current["dtype"], "op": current["op"],
               "tensor_dtypes": sorted({v["tensor"] for v in params.values()
                                        if isinstance(v, dict)})}
        key = json.dumps([mod_name, attr, params, options], sort_keys=True)
        launches.setdefault(key, rec)

    def fake_autotuner_run(self, *args, **kwargs):
        kwargs.pop("grid", None), kwargs.pop("warmup", None)
        capture(self, args, kwargs)

    def fake_interp_run(self, *args, grid, warmup, **kwargs):
        capture(self, args, kwargs)

    class FakeProps:
        multi_processor_count = FAKE_MULTIPROCESSORS
        name = "aot-recording"

    patches = [(Autotuner, "run", fake_autotuner_run),
               (InterpretedFunction, "run", fake_interp_run),
               (torch.cuda, "get_device_properties", lambda *a, **k: FakeProps()),
               (torch.cuda, "current_device", lambda: 0)]
    for mod in modules.values():
        if hasattr(mod, "triton_interpret"):
            patches.append((mod, "triton_interpret", lambda: False))
    saved = [(o, n, getattr(o, n)) for o, n, _ in patches]
    for o, n, v in patches:
        setattr(o, n, v)
    try:
        for op, drive in _drivers(torch, rk).items():
            for dt in FLOAT_DTYPES:
                current.update(op=op, dtype=dt)
                try:
                    with rk.use_backend("triton"):
                        drive(getattr(torch, dt))
                except BackendUnavailableError as exc:
                    unsupported[f"{op}/{dt}"] = str(exc)
    finally:
        for o, n, v in saved:
            setattr(o, n, v)

    # Every @triton.jit function of the package that no other jit function calls is a kernel;
    # each must have been launched by some driver, or a new op has no driver yet.
    defined = {}
    for mod_name, mod in modules.items():
        jits = {a: v for a, v in vars(mod).items() if isinstance(v, InterpretedFunction)
                and v.fn.__module__ == mod_name}
        sources = {a: inspect.getsource(v.fn) for a, v in jits.items()}
        for a in jits:
            called = any(re.search(rf"\b{re.escape(a)}\s*\(", src.split(":", 1)[1])
                         for b, src in sources.items() if b != a)
            if not called:
                defined[f"{mod_name}.{a}"] = True
    launched = {f"{r['module']}.{r['kernel']}" for r in launches.values()}
    return {"launches": list(launches.values()), "unsupported": unsupported,
            "kernels_defined": sorted(defined), "kernels_launched": sorted(launched),
            "never_launched": sorted(set(defined) - launched)}


# ============================================================================ 2. plan

def _config_dict(cfg) -> dict:
    if cfg is None:
        return {}
    out = dict(cfg.kwargs)
    for k in ("num_warps", "num_stages", "num_ctas", "maxnreg"):
        v = getattr(cfg, k, None)
        if v is not None:
            out[k] = v
    return out


def supported_capabilities() -> list[int]:
    """The targets this Triton's NVIDIA backend can compile for (sm_100 when it has ptxas for it)."""
    caps = [90, 80]
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        if os.path.exists(get_ptxas(100).path):
            caps.append(100)
    except Exception:  # noqa: BLE001 - an older layout: no sm_100
        pass
    return caps


def _variants(recorded: dict) -> dict:
    """kernel -> {"main": {dtype: launch}, "others": [launch]}: per dtype the first launch
    recorded (the drivers launch the main path first), and one launch of every other constexpr
    variant."""
    out: dict[str, dict] = {}
    for rec in recorded["launches"]:
        k = out.setdefault(f"{rec['module']}.{rec['attr']}", {"main": {}, "others": {}})
        if rec["dtype"] not in k["main"]:
            k["main"][rec["dtype"]] = rec
        key = json.dumps({c: v for c, v in rec["constexprs"].items()}, sort_keys=True)
        first = next(iter(k["main"].values()))
        if key != json.dumps(first["constexprs"], sort_keys=True):
            k["others"].setdefault(key, rec)
    return out


def plan(recorded: dict, capabilities: list[int] | None = None, mode: str = "full") -> list[dict]:
    """Jobs (launch x autotune config x target), interpreter off.

    ``full``: every dtype's main launch x every config x every target, and every other constexpr
    variant x every target with the first config. ``ci``: every kernel x config x target with the
    dtype rotating over the configs and targets (each dtype still meets every target), every
    dtype of the single-config kernels, and the other variants once (first config, sm_90).
    """
    assert os.environ.get("TRITON_INTERPRET") != "1", "plan needs TRITON_INTERPRET unset"
    caps = capabilities or supported_capabilities()
    jobs = []

    def job(rec, cfg, i, cap):
        cfg_d = _config_dict(cfg) if rec["autotuned"] else dict(rec["options"])
        return {**rec, "config": cfg_d, "config_index": i, "capability": cap,
                "target": TARGET_NAMES.get(cap, f"sm_{cap}")}

    for name, var in _variants(recorded).items():
        first = next(iter(var["main"].values()))
        obj = getattr(importlib.import_module(first["module"]), first["attr"])
        configs = list(getattr(obj, "configs", None) or [None]) if first["autotuned"] else [None]
        dtypes = list(var["main"])
        for ti, cap in enumerate(caps):
            # ci: config i gets dtype (i + ti) mod n; config 0 also takes the dtypes no config
            # got (fewer configs than dtypes), so every dtype meets every target
            got = {(i + ti) % len(dtypes) for i in range(len(configs))}
            for i, cfg in enumerate(configs):
                if mode == "full":
                    chosen = dtypes
                else:
                    chosen = [dtypes[(i + ti) % len(dtypes)]]
                    if i == 0:
                        chosen += [dt for k, dt in enumerate(dtypes) if k not in got]
                jobs += [job(var["main"][dt], cfg, i, cap) for dt in chosen]
        for rec in var["others"].values():
            for cap in (caps if mode == "full" else caps[:1]):
                jobs.append(job(rec, configs[0], 0, cap))
    return jobs


# ============================================================================ 3. compile

_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
}
_DOT_RE = re.compile(r"tt\.dot\b[^\n]*?:\s*tensor<(\d+)x(\d+)x(\w+)>\s*\*\s*tensor<(\d+)x(\d+)x\w+>")
_ESIZE = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "i8": 1, "f8E4M3FN": 1, "f8E5M2": 1,
          "f8E4M3FNUZ": 1, "f8E5M2FNUZ": 1}


def parse_ptxas(log: str) -> dict:
    out = {}
    for k, rx in _PTXAS_RE.items():
        m = rx.findall(log)
        out[k] = max(int(x) for x in m) if m else None
    return out


def analyse_ptx(ptx: str) -> dict:
    """Static facts a reviewer of a Hopper kernel checks first, read off the PTX text."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    ld = {"v4": 0, "v2": 0, "scalar": 0}
    for ln in lines:
        m = re.search(r"\bld\.global((?:\.[\w:]+)*)", ln)
        if m:
            mods = m.group(1)
            ld["v4" if ".v4" in mods else "v2" if ".v2" in mods else "scalar"] += 1
    cp_sizes = [int(x, 0) for x in re.findall(
        r"cp\.async\.c[ag]\.shared\.global[^\n;]*?\],\s*(0x[0-9a-fA-F]+|\d+)\s*[,;]", ptx)]
    tma = bool(re.search(r"cp\.async\.bulk", ptx))
    if "wgmma.mma_async" in ptx:
        tc = "wgmma"
    elif re.search(r"\bmma\.sync", ptx):
        tc = "mma"
    else:
        tc = "none"
    n_vec = ld["v4"] + ld["v2"] + sum(1 for s in cp_sizes if s >= 8)
    n_all = sum(ld.values()) + len(cp_sizes)
    return {"tensor_core": tc, "ld_global": ld, "cp_async": len(cp_sizes),
            "cp_async_16B": sum(1 for s in cp_sizes if s == 16),
            "vectorized_loads": (n_vec / n_all) if n_all else None,
            "pipelining": "tma" if tma else ("cp.async" if cp_sizes else "none")}


def analyse_ttir(ttir: str) -> dict:
    """The tile of the (first) tt.dot and the arithmetic intensity it implies: FLOPs of one K
    step over the operand bytes it loads from global memory (2*M*N*K / ((M*K + K*N) * size))."""
    m = _DOT_RE.search(ttir)
    if not m:
        return {"dot_tile": None, "arithmetic_intensity": None}
    bm, bk, dt, _, bn = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), int(m.group(5))
    size = _ESIZE.get(dt, 4)
    ai = 2 * bm * bn * bk / ((bm * bk + bk * bn) * size)
    return {"dot_tile": [bm, bn, bk], "dot_dtype": dt, "arithmetic_intensity": round(ai, 2)}


def _stand_in(spec, torch):
    if isinstance(spec, dict) and "tensor" in spec:
        dt = getattr(torch, spec["tensor"])
        t = torch.empty(8, dtype=dt)
        return t if spec["aligned"] else t[1:]
    return spec


def compile_job(job: dict) -> dict:
    """Compile one job like a launch on that GPU would; report resources and PTX facts."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    from triton import knobs

    t0 = time.perf_counter()
    cap = job["capability"]
    res = {"kernel": job["kernel"], "module": job["module"], "op": job["op"],
           "dtype": job["dtype"], "target": job["target"], "config": job["config"],
           "constexprs": job["constexprs"], "tensor_dtypes": job["tensor_dtypes"],
           "compiled": False, "ok": False, "error": None}
    try:
        obj = getattr(importlib.import_module(job["module"]), job["attr"])
        while not isinstance(obj, triton.runtime.jit.JITFunction):
            obj = obj.fn
        fn = obj
        kwargs = {k: _stand_in(v, torch) for k, v in job["params"].items()}
        kwargs.update(job["config"])
        target = GPUTarget("cuda", cap, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound_args, specialization, options = binder(**kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args,
                                                               specialization, options)
        src = ASTSource(fn, signature, constexprs, attrs)
        log = io.StringIO()
        old = knobs.nvidia.dump_ptxas_log
        knobs.nvidia.dump_ptxas_log = True
        try:
            with contextlib.redirect_stdout(log):
                k = triton.compile(src, target=target, options=options.__dict__)
        finally:
            knobs.nvidia.dump_ptxas_log = old
        ptxas_log = log.getvalue()
        if "Used" not in ptxas_log:  # a cache hit: run Triton's ptxas on the PTX ourselves
            ptxas_log = _run_ptxas(k.asm["ptx"], cap)
        res.update(parse_ptxas(ptxas_log))
        res["spills"] = (res.get("spill_stores") or 0) + (res.get("spill_loads") or 0)
        res["shared_bytes"] = int(k.metadata.shared)
        res["shared_limit"] = SHARED_LIMIT.get(cap)
        res["num_warps"] = k.metadata.num_warps
        res["num_stages"] = getattr(k.metadata, "num_stages", None)
        res.update(analyse_ptx(k.asm["ptx"]))
        res.update(analyse_ttir(k.asm.get("ttir", "")))
        res["compiled"] = True
        res["ok"] = True
        problems = []
        if res["shared_limit"] and res["shared_bytes"] > res["shared_limit"]:
            problems.append(f"shared memory {res['shared_bytes']} B > {res['shared_limit']} B")
        if res["spills"]:
            problems.append(f"register spills: {res['spill_stores']} B stored, "
                            f"{res['spill_loads']} B loaded")
        if problems:
            res["ok"] = False
            res["error"] = "; ".join(problems)
    except Exception as exc:  # noqa: BLE001 - a compile error is a result
        res["error"] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
    res["compile_s"] = round(time.perf_counter() - t0, 2)
    return res


def _run_ptxas(ptx: str, cap: int) -> str:
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    ptxas = get_ptxas(cap).path
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-lineinfo", "-v", f"--gpu-name={sm_arch_from_capability(cap)}",
                               src, "-o", os.path.join(d, "k.o")], capture_output=True, text=True)
    return proc.stderr + proc.stdout


def compile_all(jobs: list[dict], workers: int | None = None) -> list[dict]:
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    if workers == 1:
        return [compile_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(compile_job, jobs, chunksize=1))


# ============================================================================ driver API

def record_launches() -> dict:
    """Step 1 in a subprocess with the interpreter on."""
    return run_step("record", None, interpret=True)


def plan_jobs(recorded: dict, mode: str = "full") -> list[dict]:
    return run_step("plan", recorded, interpret=False, extra=["--mode", mode])


def compile_jobs(jobs: list[dict], workers: int | None = None) -> list[dict]:
    extra = ["--workers", str(workers)] if workers else []
    return run_step("compile", jobs, interpret=False, extra=extra)


def versions() -> dict:
    import torch
    import triton
    return {"torch": torch.__version__, "triton": triton.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["record", "plan", "compile", "versions"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--mode", choices=["full", "ci"], default="full")
    args = ap.parse_args(argv)
    if args.step == "record":
        out = record()
    elif args.step == "versions":
        out = versions()
    else:
        payload = json.loads(sys.stdin.read())
        out = (plan(payload, mode=args.mode) if args.step == "plan"
               else compile_all(payload, args.workers))
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
