#!/usr/bin/env bash
# CI: ahead-of-time GPU compilation of every Triton kernel with Triton 3.6 (the GPU machines'
# version), so an API our kernels use that 3.6 lacks fails here rather than on the GPU.
#
# A small venv holds only what the check needs: triton==3.6.0 installed into it, and, read
# through a .pth line placed after its own site-packages, the CI interpreter's packages
# (torch==2.13.0 from the local CPU wheel, numpy, pytest, rgbd_kernels installed editable), so
# nothing else is downloaded or unpacked. The pins are checked, not assumed.
#
#   bash .ci/aot_triton36.sh            # uses $PYTHON or python3 (the interpreter CI installed into)
#   AOT36_VENV=/path bash .ci/aot_triton36.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
VENV=${AOT36_VENV:-/tmp/rgbd-aot-triton36}
t0=$(date +%s)

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import triton, sys; sys.exit(triton.__version__ != '3.6.0')" 2>/dev/null; then
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV"
    # the parent interpreter's site-packages, searched after the venv's own (triton 3.6 wins)
    parent=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    venv_site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$parent')" > "$venv_site/zz_parent_site.pth"
    # --target installs into the venv's site-packages and never uninstalls the parent's triton
    # (--prefix would: pip removes a conflicting version from the running environment first)
    "$PY" -m pip install -q --no-deps --target "$venv_site" "triton==3.6.0"
fi
# exactly the pins the check needs, read through the venv
"$VENV/bin/python" - <<'EOF'
import numpy, pytest, torch, triton
assert triton.__version__ == "3.6.0", triton.__version__
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
print("aot triton36 venv:", "triton", triton.__version__, "torch", torch.__version__,
      "numpy", numpy.__version__, "pytest", pytest.__version__)
EOF
echo "venv ready in $(( $(date +%s) - t0 )) s; $(du -sh "$VENV" | cut -f1) on disk"

# The test sets up its own subprocesses (interpreter on for recording, off for compiling).
export TRITON_INTERPRET=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR_36:-$HOME/.triton/cache-3.6}
# Triton 3.6's ptxas spills in the conv dgrad kernel on sm_80 for every tile tried (3.9 does not);
# the A100 is not a machine we run on, so its resource findings are printed, not failed. sm_90
# and sm_100 stay strict, and compile errors fail on every target.
export RGBD_AOT_RESOURCES_REPORT_ONLY=sm_80
"$VENV/bin/python" -m pytest tests/kernels/test_aot_compile.py -q -rP -p no:cacheprovider
echo "aot triton 3.6 check done in $(( $(date +%s) - t0 )) s"
