from setuptools import setup

setup(
    name="risk-engine",
    version="0.1.0",
    description="Real-time risk-decision engine: ZeroMQ front door, shared-memory rings, Numba rule kernels",
    python_requires=">=3.10",
    packages=["engine", "ingress", "shm", "rules", "bpf", "bench"],
    package_data={"engine": ["*.yaml"], "rules": ["examples/*.yaml", "examples/*.txt"],
                  "bpf": ["*.c"]},
    install_requires=[
        "pyzmq>=25", "numpy>=1.24", "numba>=0.58", "psutil>=5.9", "posix_ipc>=1.1",
        "prometheus-client>=0.17", "pyyaml>=6", "setproctitle>=1.3", "hdrhistogram>=0.10",
    ],
    # bcc is Debian's python3-bpfcc (scripts/install_ebpf.sh links it into the venv);
    # PyPI's package named 'bcc' is an unrelated library and must never be listed here.
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2"],
        "plot": ["matplotlib>=3.5"],
        "fuzz": ["atheris>=2"],
    },
    entry_points={"console_scripts": ["risk-engine=engine.cli:main"]},
)
