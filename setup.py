"""Build of pointsparse and its one extension, pointsparse._C.

CPU sources always build. CUDA sources build when nvcc and a CUDA-enabled torch are present;
FORCE_CUDA=1 builds them regardless, POINTSPARSE_CPU_ONLY=1 never. TORCH_CUDA_ARCH_LIST picks the
GPU architectures (default: the visible GPU, else 9.0).
"""

import glob
import os
import shutil
import site
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _default_cuda_home() -> None:
    # torch guesses CUDA_HOME from nvcc's path (/usr/local/bin/nvcc -> /usr/local), which then
    # fails to link cudart; the toolkit proper lives in /usr/local/cuda.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_default_cuda_home()

import torch  # noqa: E402  (CUDA_HOME must be set before torch's extension tooling reads it)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def _want_cuda() -> bool:
    if _flag("POINTSPARSE_CPU_ONLY"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    return has_nvcc and torch.version.cuda is not None


def _nvidia_include_dirs() -> list:
    # Wheels of the CUDA libraries (nvidia/cu13/include and siblings) carry headers torch's CUDA
    # headers include (cusparse.h, cublas_v2.h); a bare nvcc install may lack them.
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    found = []
    for root in roots:
        for folder in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if folder not in found:
                found.append(folder)
    return found


def _default_arch_list() -> None:
    if "TORCH_CUDA_ARCH_LIST" in os.environ:
        return
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    else:
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"


def _extension():
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/*/*.cpp") + glob.glob("csrc/*/cpu/*.cpp"))
    # at::parallel_for is an OpenMP loop in torch's builds: without -fopenmp it runs serially.
    cxx_flags = ["-O3", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not _want_cuda():
        return CppExtension("pointsparse._C", cpu_sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=link_flags)
    _default_arch_list()
    cuda_sources = sorted(glob.glob("csrc/*/cuda/*.cu"))
    return CUDAExtension(
        "pointsparse._C",
        cpu_sources + cuda_sources,
        include_dirs=_nvidia_include_dirs(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=link_flags,
    )


setup(
    name="pointsparse",
    version="0.1.0",
    description="Point-cloud sparse convolution engine for PyTorch (CPU and CUDA)",
    packages=["pointsparse", "pointsparse.ops", "pointsparse.nn", "pointsparse.bench", "pointsparse.models",
              "pointsparse.datasets", "pointsparse.compat", "pointsparse.compat.torchsparse",
              "pointsparse.compat.torchsparse.nn", "pointsparse.compat.spconv"],
    package_dir={
        "pointsparse": "pointsparse",
        "pointsparse.models": "models",
        "pointsparse.datasets": "datasets",
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    entry_points={"console_scripts": ["pointsparse = pointsparse.cli:main"]},
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis"], "open3d": ["open3d"], "spconv": ["spconv"]},
    zip_safe=False,
)
