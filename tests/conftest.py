"""Shared fixtures: paths to the real data in ../shared (skipped cleanly when absent), daemons."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_kit import DaemonProcess, base_settings
from tiny_models import write_tiny_model

from stm_live.config import load_config
from stm_live.daemon import Daemon

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


# --------------------------------------------------------------------------
# Daemons (helpers in daemon_kit.py)
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def plain_logging() -> Iterator[None]:
    """``main()`` points the stm_live logger at the sys.stderr of its moment (pytest's capture, closed later).

    Every test starts with the logger propagating to pytest's capture and ends with it put back, so
    a thread still logging after a test that called ``main()`` never writes to a closed stream.
    """
    logger = logging.getLogger("stm_live")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:], logger.propagate = [], True
    logger.setLevel(logging.NOTSET)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    write_tiny_model(path, nm_per_px=0.2)
    return path


@pytest.fixture
def make_daemon(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., Daemon]]:
    """``make_daemon(**{"dotted.key": value})``: a started in-process daemon, closed after the test."""
    started: list[Daemon] = []

    def make(**extra: Any) -> Daemon:
        config = load_config(None, use_default_file=False, environ={},
                             overrides=base_settings(tmp_path, tiny_model, **extra))
        daemon = Daemon(config)
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
        daemon.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    procs: list[DaemonProcess] = []

    def make(settings: dict[str, Any], name: str = "daemon") -> DaemonProcess:
        proc = DaemonProcess(tmp_path, settings, name)
        procs.append(proc)
        proc.wait_ready()
        return proc

    yield make
    for proc in procs:
        proc.close()
