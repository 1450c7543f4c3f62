"""``stm-live discover IMAGE``: propose feature classes on an unlabelled surface (k-means of embeddings)."""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

HELP = "cluster a model's embeddings of an unlabelled image to propose feature classes for a person to name"
DESCRIPTION = """\
The unsupervised half of the few-shot workflow: the encoder's per-pixel embeddings are
clustered with k-means; small clusters made of compact blobs are candidate feature
classes. Writes clusters.npy (uint8, cluster 1..K per pixel at the image's grid),
clusters.png (overlay) and proposals.csv (x_nm,y_nm,class with class = cluster_<k>, one
row per blob of the small clusters). Rename the classes you recognise, delete the rest,
and pass the file to `stm-live adapt --points`.
"""
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help=".sxm, .npy or .npz scan")
    parser.add_argument("--model", default="base-encoder", help="model or encoder whose embeddings are clustered")
    parser.add_argument("--clusters", type=int, default=6, help="number of k-means clusters")
    parser.add_argument("--max-fraction", type=float, default=0.15,
                        help="clusters covering more of the image than this are taken as background")
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
    rng = np.random.default_rng(args.seed)
    sample = x if len(x) <= 50_000 else x[rng.choice(len(x), 50_000, replace=False)]
    centres, _ = kmeans2(sample, args.clusters, minit="++", seed=rng)
    assign = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1).reshape(h, w)
    # Number clusters by area, largest first: cluster 1 is the most common texture.
    order = np.argsort(-np.bincount(assign.reshape(-1), minlength=args.clusters))
    rank = np.empty_like(order)
    rank[order] = np.arange(1, args.clusters + 1)
    clusters = rank[assign].astype(np.uint8)

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
            mean_height = float(prepared[member].mean()) if member.any() else 0.0
            summary.append((k, fraction, n, mean_height))
            if fraction > args.max_fraction or n == 0:
                continue
            centres_px = ndimage.center_of_mass(member, labels, range(1, n + 1))
            sizes = ndimage.sum_labels(member, labels, range(1, n + 1))
            for (cy, cx), size in zip(centres_px, sizes, strict=True):
                if size >= 2:
                    writer.writerow([f"{(cx + 0.5) * pitch[0]:.3f}",
                                     f"{(cy + 0.5) * pitch[1] + rows.start * frame.nm_per_px[1]:.3f}",
                                     f"cluster_{k}"])
    print(f"{args.image}: {args.clusters} clusters of {model.name} embeddings ({w} x {h} model px)")
    print(f"  {'cluster':>8s} {'area %':>7s} {'blobs':>6s} {'mean height (norm.)':>20s}")
    for k, fraction, n, height in summary:
        tag = "background?" if fraction > args.max_fraction else "candidate feature class"
        print(f"  {k:8d} {100 * fraction:7.2f} {n:6d} {height:20.2f}   {tag}")
    print(f"wrote {out / 'clusters.npy'}, {out / 'clusters.png'}, {out / 'proposals.csv'}")
    return 0
