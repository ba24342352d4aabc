"""Run the Triton causal conv3d forward once at a Cosmos tokenizer shape, for a profiler.

    ncu --profile-from-start off ... python benchmarks/gpu/conv3d_profile.py
    python benchmarks/gpu/conv3d_profile.py --dry-run     # CPU, interpreter, a small shape

bf16, channels_last_3d, C_in = C_out = 256, 9 frames of 128 x 128, kernel (1, 3, 3), padding 1,
bias (the Cosmos CV8x8x8 encoder's mid-resolution conv). The first calls autotune; only the
final call runs between ``cudaProfilerStart`` and ``cudaProfilerStop``, so a profiler started
with ``--profile-from-start off`` sees one launch of each kernel of the op.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import rgbd_kernels as rk

    if args.dry_run:
        device, dtype, (c, t, h, w) = torch.device("cpu"), torch.float32, (16, 3, 8, 8)
    else:
        if not torch.cuda.is_available():
            print("conv3d_profile: no CUDA device", file=sys.stderr)
            return 2
        device, dtype, (c, t, h, w) = torch.device("cuda"), torch.bfloat16, (256, 9, 128, 128)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, c, t, h, w, device=device, generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    wt = (torch.randn(c, c, 1, 3, 3, device=device, generator=g) / (9 * c) ** 0.5).to(dtype)
    b = torch.randn(c, device=device, generator=g).to(dtype)
    with rk.use_backend("triton"):
        for _ in range(2):  # autotune + warm-up
            y = rk.causal_conv3d(x, wt, b, padding=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        y = rk.causal_conv3d(x, wt, b, padding=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
    with rk.use_backend("reference"):
        ref = rk.causal_conv3d(x, wt, b, padding=1)
    err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
    print(f"conv3d_profile: y {tuple(y.shape)} {y.dtype}, rel error vs reference {err:.2e}")
    return 0 if err < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
