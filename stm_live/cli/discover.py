"""``stm-live discover IMAGE``: propose feature classes on an unlabelled surface (k-means of embeddings)."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

HELP = "cluster a model's embeddings of an unlabelled image to propose feature classes for a person to name"
DESCRIPTION = """\
The unsupervised half of the few-shot workflow. Features are rare (a few percent of the
pixels), so clustering every pixel would spend the clusters on the background's texture:
instead the pixels whose embeddings lie farthest from the image's typical embedding (the
--outliers fraction) are clustered with k-means, and everything else is background.
Writes clusters.npy (uint8: 0 = background, cluster 1..K, at the image's grid),
clusters.png (overlay) and proposals.csv (x_nm,y_nm,class with class = cluster_<k>, one
row per blob). Rename the classes you recognise, delete the rest, and pass the file to
`stm-live adapt --points`.
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help=".sxm, .npy or .npz scan")
    parser.add_argument("--model", default="base-encoder", help="model or encoder whose embeddings are clustered")
    parser.add_argument("--clusters", type=int, default=6, help="number of k-means clusters of unusual pixels")
    parser.add_argument("--outliers", type=float, default=0.08,
                        help="fraction of pixels, farthest from the typical embedding, that are clustered")
    parser.add_argument("--min-pixels", type=int, default=3, help="smaller blobs are not proposed (model px)")
    parser.add_argument("--out", default="discover", help="output folder (default: ./discover)")
    parser.add_argument("--channel", default="Z")
    parser.add_argument("--width-nm", type=float, help="physical width of array images")
    parser.add_argument("--height-nm", type=float)
    parser.add_argument("--nm-per-px", type=float, help="pitch to run the encoder at (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from scipy import ndimage
    from scipy.cluster.vq import kmeans2

    from ..errors import StmLiveError
    from ..io import read_frame
    from ..model.prepare import to_image_grid
    from ..model.runtime import SegmentationModel
    from ..publish import overlay_rgb
    from .segment import resolve_model_path

    if not 2 <= args.clusters <= 32:
        raise StmLiveError(f"--clusters {args.clusters}: expected 2..32")
    model = SegmentationModel(resolve_model_path(args.model), provider="cpu")
    frame = read_frame(args.image, channel=args.channel, width_nm=args.width_nm, height_nm=args.height_nm)
    embedding, prepared = model.embed(frame, nm_per_px=args.nm_per_px)
    d, h, w = embedding.shape
    x = embedding.reshape(d, -1).T.astype(np.float64)
    if not 0 < args.outliers < 1:
        raise StmLiveError(f"--outliers {args.outliers}: expected a fraction between 0 and 1")
    distance = np.sqrt(((x - np.median(x, axis=0)) ** 2).sum(axis=1))
    unusual = distance > np.quantile(distance, 1 - args.outliers)
    rng = np.random.default_rng(args.seed)
    pool = x[unusual]
    sample = pool if len(pool) <= 50_000 else pool[rng.choice(len(pool), 50_000, replace=False)]
    if len(sample) < args.clusters:
        raise StmLiveError(f"{args.image}: too few unusual pixels ({len(sample)}) for {args.clusters} clusters")
    centres, _ = kmeans2(sample, args.clusters, minit="++", seed=rng)
    nearest = ((pool[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    # Number clusters by how far they are from the typical pixel, most unusual first.
    order = np.argsort(-np.sqrt(((centres - np.median(x, axis=0)) ** 2).sum(axis=1)))
    rank = np.empty_like(order)
    rank[order] = np.arange(1, args.clusters + 1)
    flat = np.zeros(h * w, np.uint8)
    flat[unusual] = rank[nearest]
    clusters = flat.reshape(h, w)

    rows = frame.valid_rows
    full = np.zeros(frame.data.shape, np.uint8)
    pitch_nm = args.nm_per_px or model.info.nm_per_px
    full[rows] = to_image_grid(clusters, (rows.stop - rows.start, frame.cols), nm_per_px=frame.nm_per_px,
                               target_nm_per_px=pitch_nm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "clusters.npy", full, allow_pickle=False)
    Image.fromarray(overlay_rgb(prepared, clusters)).save(out / "clusters.png")

    pitch = (pitch_nm, pitch_nm)
    summary = []
    with (out / "proposals.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["x_nm", "y_nm", "class"])
        for k in range(1, args.clusters + 1):
            member = clusters == k
            fraction = float(member.mean())
            labels, n = ndimage.label(member)
            sizes = ndimage.sum_labels(member, labels, range(1, n + 1)) if n else np.zeros(0)
            centres_px = ndimage.center_of_mass(member, labels, range(1, n + 1)) if n else []
            kept = [(cy, cx) for (cy, cx), size in zip(centres_px, sizes, strict=True) if size >= args.min_pixels]
            mean_height = float(prepared[member].mean()) if member.any() else 0.0
            summary.append((k, fraction, len(kept), mean_height))
            for cy, cx in kept:
                writer.writerow([f"{(cx + 0.5) * pitch[0]:.3f}",
                                 f"{(cy + 0.5) * pitch[1] + rows.start * frame.nm_per_px[1]:.3f}",
                                 f"cluster_{k}"])
    print(f"{args.image}: {args.clusters} clusters of {model.name} embeddings ({w} x {h} model px)")
    print(f"  {'cluster':>8s} {'area %':>7s} {'blobs':>6s} {'mean height (norm.)':>20s}")
    for k, fraction, n, height in summary:
        print(f"  {k:8d} {100 * fraction:7.2f} {n:6d} {height:20.2f}")
    print(f"wrote {out / 'clusters.npy'}, {out / 'clusters.png'}, {out / 'proposals.csv'}")
    return 0
