"""Shared fixtures: paths to the real data in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REAL_SXM = SHARED / "real-sxm"
REAL_NPY = SHARED / "real-npy"

AU_MICA = "Au_mica_2023_Y_A_diPAMY_195.sxm"
NC_AFM = "A151216.123306-02602.sxm"


def _shared_file(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is missing (../shared is not beside the checkout)")
    return path


@pytest.fixture
def au_mica_sxm() -> Path:
    """Real Nanonis STM file: 256 x 256 px, 4 x 4 nm, Z and Current, scan down."""
    return _shared_file(REAL_SXM, AU_MICA)


@pytest.fixture
def nc_afm_sxm() -> Path:
    """Real older Nanonis nc-AFM file: 128 x 128 px, 9 channels, scan up."""
    return _shared_file(REAL_SXM, NC_AFM)


@pytest.fixture
def real_npy() -> Path:
    """Folder of the real Si(001):H and TiO2(110) arrays."""
    if not REAL_NPY.is_dir():
        pytest.skip(f"real data not available: {REAL_NPY} is missing (../shared is not beside the checkout)")
    return REAL_NPY
