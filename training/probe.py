"""Linear probe of the frozen RetinaFace backbone: ``python -m training.probe --data DIR [DIR ...]``.

A minute-long answer to "which input does the pretrained backbone see fakes best in?", used to
choose the crop before any fine-tuning (docs/ABLATIONS.md). Each image of the train and validation
splits goes through the backbone once, each stage's map is pooled to a mean and a standard
deviation per channel, and a standardised logistic regression is fitted on train and scored on
validation, per data root.

``--view``: ``resize`` (the face box grown by the margin, resized: the old crop), ``native`` (the
served native crop), ``whole`` (the whole image, untouched). ``--zoom 2`` enlarges the input first.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from runtime.face_hybrid import FaceHybridNet, load_pretrained_backbone
from runtime.model import build_model
from training.config import TrainConfig
from training.data import CachedCrop, CropDataset, pil_to_tensor
from training.sampling import prepare_crops


def mean_std(feature: torch.Tensor) -> torch.Tensor:
    flat = feature.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], 1)


@torch.no_grad()
def pooled_features(model: FaceHybridNet, items: list[CachedCrop], view: str, zoom: int) -> np.ndarray:
    """Per image, each pretrained stage map pooled to its channels' mean and standard deviation."""
    crops = CropDataset(items)
    rows = []
    for i, item in enumerate(items):
        if view == "whole":
            with Image.open(item.source) as image:
                x = pil_to_tensor(image.convert("RGB"))[None]
        else:
            x = crops[i][0][None]
        if zoom > 1:
            x = F.interpolate(x, scale_factor=zoom, mode="bilinear", align_corners=False)
        rows.append(torch.cat([mean_std(f) for f in model.backbone_features(x)], 1))
    return torch.cat(rows).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--view", choices=["resize", "native", "whole"], default="native")
    parser.add_argument("--input-size", type=int, default=192)
    parser.add_argument("--zoom", type=int, default=1)
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(size="face", crop="resize" if args.view == "resize" else "native", model={"input_size": args.input_size},
                         threads=args.threads)
    crops, _, _ = prepare_crops(config, args.data if len(args.data) > 1 else args.data[0])
    model = build_model("face", input_size=args.input_size).eval()
    load_pretrained_backbone(model.backbone)
    x_train, x_val = (pooled_features(model, crops[s], args.view, args.zoom) for s in ("train", "val"))
    y_train, y_val = (np.array([c.label for c in crops[s]]) for s in ("train", "val"))
    names = np.array([c.dataset for c in crops["val"]])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=args.C, max_iter=5000)).fit(x_train, y_train)
    p = probe.predict_proba(x_val)[:, 1]
    for name in sorted(set(names)):
        print(f"{args.view} {args.input_size} px, zoom {args.zoom}: {name} validation ROC AUC {roc_auc_score(y_val[names == name], p[names == name]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
