"""``.gwy`` results read back by Gwyddion itself (Debian's ``gwyddion`` package), not only by gwyfile.

Two ways Gwyddion shows what it read, both headless:

* ``gwyddion --convert-to-gwy=OUT IN`` loads the file into Gwyddion's own
  objects and saves them again: channel titles, data and units as Gwyddion
  understood them;
* ``gwyddion-thumbnailer`` renders one channel with its mask drawn over it:
  the pixels where the rendering differs from the same channel rendered
  without its mask are the pixels Gwyddion masks.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stm_live.io.gwy import ALL_CLASSES_COLOUR, gwy_channels, gwy_container, write_gwy

gwyfile = pytest.importorskip("gwyfile", reason="gwyfile is not installed (the batch extra)")


@dataclass(frozen=True)
class Channel:
    """One channel as Gwyddion read it."""

    title: str
    data: np.ndarray
    mask: np.ndarray | None
    xreal: float
    unit_xy: str
    unit_z: str


def _need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package gwyddion; .ci/run installs it)")
    return path


def _thumbnail(path: Path, channel: int, out: Path, size: int) -> np.ndarray:
    from PIL import Image

    png = out / f"{path.stem}-{channel}.png"
    with open(png, "wb") as fh:
        subprocess.run([_need("gwyddion-thumbnailer"), "-c", str(channel), "kde4", str(size), str(path)],
                       stdout=fh, check=True, timeout=120)
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def gwyddion_reads(path: Path, work: Path) -> list[Channel]:
    """The channels of a ``.gwy`` file as Gwyddion reads them, masks from Gwyddion's own rendering."""
    gwyddion = _need("gwyddion")
    work.mkdir(parents=True, exist_ok=True)
    resaved = work / f"{path.stem}.gwyddion.gwy"
    done = subprocess.run([gwyddion, f"--convert-to-gwy={resaved}", str(path)], capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0 and resaved.is_file(), done.stderr
    assert "CRITICAL" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    checked = subprocess.run([gwyddion, "--check", str(path)], capture_output=True, text=True, timeout=180,
                             check=False)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    container = gwyfile.load(str(resaved))
    # The same channels without masks: the reference rendering.
    bare = gwyfile.objects.GwyContainer({k: v for k, v in container.items() if "/mask" not in k})
    bare_path = work / f"{path.stem}.bare.gwy"
    bare.tofile(str(bare_path))
    channels = []
    k = 0
    while f"/{k}/data" in container:
        field = container[f"/{k}/data"]
        data = field.data
        size = max(data.shape)
        mask = None
        if f"/{k}/mask" in container:
            drawn = _thumbnail(resaved, k, work, size)
            plain = _thumbnail(bare_path, k, work, size)
            assert drawn.shape[:2] == data.shape, "the thumbnail must not be scaled"
            mask = np.abs(drawn - plain).max(axis=2) > 0
        channels.append(Channel(str(container[f"/{k}/data/title"]), data, mask, float(field["xreal"]),
                                field["si_unit_xy"]["unitstr"], field["si_unit_z"]["unitstr"]))
        k += 1
    return channels


def _result() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 1e-11, size=(48, 64)).astype(np.float32)
    class_map = np.zeros(image.shape, np.uint8)
    class_map[5:10, 5:12] = 1
    class_map[20:24, 40:50] = 2
    class_map[30:40, 10:14] = 3
    class_map[44:, 60:] = 1
    image[-3:] = np.nan  # rows not acquired
    return image, class_map


def test_gwyddion_reads_one_channel_per_class_with_its_mask(tmp_path: Path) -> None:
    image, class_map = _result()
    classes = ["AsH3", "dangling_bond", "dimer_vacancy"]
    container = gwy_container(image, class_map, classes, width_m=12.8e-9, height_m=9.6e-9, unit="m",
                              colours=[(230, 25, 75), (60, 180, 75), (0, 130, 200)],
                              meta={"stm-live model": "si001-ash3 [abc]", "x": "1"})
    path = write_gwy(tmp_path / "r.gwy", container)
    channels = gwyddion_reads(path, tmp_path / "gwyddion")
    assert [c.title for c in channels] == gwy_channels(classes) == [
        "Z levelled (all classes)", "Z levelled: AsH3", "Z levelled: dangling_bond", "Z levelled: dimer_vacancy"]
    assert channels[0].mask is not None
    np.testing.assert_array_equal(channels[0].mask, class_map > 0)
    for k, channel in enumerate(channels[1:], start=1):
        assert channel.mask is not None
        np.testing.assert_array_equal(channel.mask, class_map == k)
    finite = np.isfinite(image)
    for channel in channels:
        np.testing.assert_array_equal(channel.data[finite], image[finite].astype(np.float64))
        assert np.isfinite(channel.data).all()  # unscanned rows filled: Gwyddion has no missing values
        assert channel.xreal == pytest.approx(12.8e-9) and channel.unit_xy == "m" and channel.unit_z == "m"
    resaved = gwyfile.load(str(tmp_path / "gwyddion" / "r.gwyddion.gwy"))
    assert resaved["/0/meta"]["stm-live model"] == "si001-ash3 [abc]" and resaved["/0/meta"]["x"] == "1"
    assert resaved["/0/mask/red"] == pytest.approx(ALL_CLASSES_COLOUR[0] / 255)
    assert resaved["/2/mask/green"] == pytest.approx(180 / 255)


def test_the_gwy_writer_refuses_what_gwyddion_could_not_show(tmp_path: Path) -> None:
    image, class_map = _result()
    with pytest.raises(ValueError, match="shape"):
        gwy_container(image, class_map[:10], ["a", "b", "c"], width_m=1e-9, height_m=1e-9)
    with pytest.raises(ValueError, match="class 3 but only 2 classes"):
        gwy_container(image, class_map, ["a", "b"], width_m=1e-9, height_m=1e-9)
    with pytest.raises(ValueError, match="no finite pixel"):
        gwy_container(np.full((4, 4), np.nan), np.zeros((4, 4), np.uint8), ["a"], width_m=1e-9, height_m=1e-9)
    # Written atomically: nothing is left behind when writing fails half-way.
    container = gwy_container(image, class_map, ["a", "b", "c"], width_m=1e-9, height_m=1e-9)
    with pytest.raises(FileNotFoundError):
        write_gwy(tmp_path / "missing" / "r.gwy", container)
    assert not list(tmp_path.rglob("*.tmp"))
