"""Make the timm fixtures of ``tests/test_timm.py``: run once, in an environment that has timm.

    python -m venv /tmp/timmenv && /tmp/timmenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm
    /tmp/timmenv/bin/python tests/data/timm/make_fixtures.py

For each timm counterpart of a zoo network it records the state dict's keys, shapes and dtypes,
timm's preprocessing configuration, and timm's logits for ``seeded.state`` weights on a fixed
64x64 ``seeded.image``: ``architectures.json.gz`` and ``logits.npz`` beside this file. edgekit
itself never imports timm.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from seeded import image, state  # noqa: E402

NAMES = ["ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160",
         *[f"efficientnet_b{i}" for i in range(8)], *[f"tf_efficientnet_b{i}" for i in range(8)],
         "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
         "tf_efficientnetv2_s", "tf_efficientnetv2_m", "tf_efficientnetv2_l",
         "fbnetc_100", "fbnetv3_b", "fbnetv3_d", "fbnetv3_g"]
SIZE = 64
CFG_KEYS = ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "crop_mode", "interpolation", "mean",
            "std", "num_classes")


def main() -> None:
    torch.manual_seed(0)
    x = torch.from_numpy(image((1, 3, SIZE, SIZE)))
    archs, logits = {}, {}
    for name in NAMES:
        model = timm.create_model(name, pretrained=False).eval()
        sd = model.state_dict()
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        values = state(shapes)
        model.load_state_dict({k: torch.from_numpy(values[k]) if k in values else sd[k] for k in sd})
        with torch.no_grad():
            logits[name] = model(x).numpy()
        cfg = model.pretrained_cfg
        archs[name] = {"keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()],
                       "cfg": {k: cfg[k] for k in CFG_KEYS if k in cfg}}
        print(name, len(sd), float(np.abs(logits[name]).max()), flush=True)
    meta = {"timm": timm.__version__, "torch": torch.__version__, "input": [1, 3, SIZE, SIZE]}
    with gzip.open(HERE / "architectures.json.gz", "wt") as f:
        json.dump({"meta": meta, "architectures": archs}, f)
    np.savez_compressed(HERE / "logits.npz", **logits)


if __name__ == "__main__":
    main()
