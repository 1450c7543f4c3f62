"""Package layout that pyproject.toml alone cannot express.

The bundled ONNX models live in ``models/`` at the repository root (where a
person looks for them) and install as the package ``stm_live.bundled_models``.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["stm_live", "stm_live.*"], exclude=["*.__pycache__"]),
        "stm_live.bundled_models",
    ],
    package_dir={"stm_live.bundled_models": "models"},
)
