"""Speed of `stm-live segment`'s in-process path vs the paper's sliding-window U-Net in torch.

Measures, on the same 512 x 512 simulated Si(001)+AsH3 frame (50 nm):

* stm-live: ``SegmentationModel.segment`` (levelling, resampling to the model's
  pitch, onnxruntime inference, instances, class map back to the input grid),
  per-stage medians;
* the baseline: a torch-eager reimplementation of the segmentation stage of
  Kolev, Stock et al. (arXiv 2506.01678): a U-Net with 32-64-128-256 channels
  run on 64 x 64 windows at 50 % overlap (stride 32) over the whole frame,
  overlapping outputs averaged. Windows go through in batches (faster than
  the window-by-window loop of a naive implementation; the comparison is
  generous to the baseline). Untrained weights: only the time matters.

Usage: python benchmarks/bench_segment.py [--model models/si001-ash3.onnx] [--repeat 20]
Needs the train extra (torch) for the baseline; --no-baseline skips it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from stm_live.model.runtime import SegmentationModel, bundled_model_path


def _unet(torch):
    nn = torch.nn

    def double(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), n_out: int = 4) -> None:
            super().__init__()
            self.down = nn.ModuleList()
            c = 1
            for w in widths:
                self.down.append(double(c, w))
                c = w
            self.up = nn.ModuleList()
            self.merge = nn.ModuleList()
            for w in reversed(widths[:-1]):
                self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
                self.merge.append(double(2 * w, w))
                c = w
            self.out = nn.Conv2d(c, n_out, 1)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i < len(self.down) - 1:
                    skips.append(x)
                    x = torch.nn.functional.max_pool2d(x, 2)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
                x = merge(torch.cat([up(x), skip], dim=1))
            return self.out(x)

    return UNet().eval()


def sliding_window_unet(torch, net, image: np.ndarray, window: int = 64, stride: int = 32, batch: int = 64):
    """Average the U-Net's outputs over overlapping windows covering ``image``."""
    h, w = image.shape
    starts_r = list(range(0, h - window + 1, stride))
    starts_c = list(range(0, w - window + 1, stride))
    coords = [(r, c) for r in starts_r for c in starts_c]
    out = torch.zeros(4, h, w)
    weight = torch.zeros(1, h, w)
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    with torch.no_grad():
        for i in range(0, len(coords), batch):
            chunk = coords[i : i + batch]
            tiles = torch.stack([x[r : r + window, c : c + window] for r, c in chunk])[:, None]
            pred = net(tiles)
            for (r, c), p in zip(chunk, pred, strict=True):
                out[:, r : r + window, c : c + window] += p
                weight[:, r : r + window, c : c + window] += 1
    return (out / weight.clamp_min(1)).argmax(0)


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model file (default: bundled si001-ash3)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    from stm_live.sim import simulate_scan

    scan = simulate_scan("si001-ash3", size_nm=50.0, pixels=512, seed=7)
    frame = scan.frame("Z", "forward")
    model = SegmentationModel(args.model or bundled_model_path(), provider="cpu")
    load1 = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {load1:.2f}; model {model.name} "
          f"[{model.id}] at {model.info.nm_per_px} nm/px; frame 512 x 512 px, 50 nm")
    stages: dict[str, list[float]] = {}
    totals = []
    model.segment(frame)
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        seg = model.segment(frame)
        totals.append((time.perf_counter() - t0) * 1e3)
        for k, v in seg.timings_ms.items():
            stages.setdefault(k, []).append(v)
    print(f"stm-live segment (in-process): median {statistics.median(totals):.1f} ms over {args.repeat} runs "
          f"(min {min(totals):.1f}, max {max(totals):.1f}); {len(seg.detections)} detections")
    print("  stages (median ms): " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stages.items()))
    if not args.no_baseline:
        import torch

        torch.manual_seed(0)
        net = _unet(torch)
        image = (frame.data - np.median(frame.data)) / (np.std(frame.data) + 1e-12)
        base = _median_ms(lambda: sliding_window_unet(torch, net, image), max(3, args.repeat // 5))
        print(f"paper-style sliding-window U-Net (torch {torch.__version__} eager, {torch.get_num_threads()} threads, "
              f"32-64-128-256, 64 px windows, 50 % overlap, 225 windows): median {base:.0f} ms")
        print(f"speed-up: {base / statistics.median(totals):.0f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
