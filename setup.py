"""Build script for the compiled part of rgbd_kernels (``rgbd_kernels._C``).

``pip install --no-build-isolation -e .`` compiles ``csrc/*.cpp`` (C++ CPU ops) always, and
``csrc/cuda/*.cu`` only when torch has CUDA and nvcc is found. Environment switches:

* ``RGBD_KERNELS_SKIP_CUDA_BUILD=1``  never compile the CUDA sources.
* ``RGBD_KERNELS_FORCE_CUDA_BUILD=1`` compile them even when detection says no (e.g. a build
  machine with nvcc and a CUDA torch but no GPU).
* ``RGBD_KERNELS_CUDA_ARCHS="80;90"``  target architectures (default sm_80 and sm_90).
* ``RGBD_KERNELS_SKIP_BUILD=1``       build no extension at all (pure-Python install).
"""
import glob
import os

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    if _flag("RGBD_KERNELS_SKIP_BUILD"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))

    if _flag("RGBD_KERNELS_FORCE_CUDA_BUILD"):
        build_cuda = True
    elif _flag("RGBD_KERNELS_SKIP_CUDA_BUILD"):
        build_cuda = False
    else:
        build_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    build_cuda = build_cuda and bool(cuda_sources)

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    common = dict(
        name="rgbd_kernels._C",
        include_dirs=[os.path.join(here, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if build_cuda:
        archs = os.environ.get("RGBD_KERNELS_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        nvcc_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
        for arch in filter(None, (a.strip() for a in archs)):
            nvcc_flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        ext = CUDAExtension(
            sources=cpp_sources + cuda_sources,
            define_macros=[("RGBD_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            **common,
        )
    else:
        ext = CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx_flags}, **common)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
