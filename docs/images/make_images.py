"""Regenerate the example pictures of docs/visualization.md (run from the repo root).

``.venv/bin/python docs/images/make_images.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lens_train as lt  # noqa: E402
from tests.models import DemoNetwork, SimpleRecurrent  # noqa: E402
from tests.viz.viz_models import Blocks, Conditional, InceptionNet, SmallResNet  # noqa: E402

OUT = Path(__file__).resolve().parent


def main() -> None:
    x5 = torch.rand(5, 5)
    pictures = [
        ("demo_unrolled", DemoNetwork(), x5, {}),
        ("recurrent_unrolled", SimpleRecurrent(), x5, {}),
        ("recurrent_rolled", SimpleRecurrent(), x5, {"vis_opt": "rolled"}),
        ("conditional", Conditional(), x5, {}),
        ("inception_full", InceptionNet(), torch.rand(2, 4), {}),
        ("inception_depth1", InceptionNet(), torch.rand(2, 4), {"vis_nesting_depth": 1}),
        ("inception_depth2", InceptionNet(), torch.rand(2, 4), {"vis_nesting_depth": 2}),
        ("blocks_focus", Blocks(), torch.rand(2, 8), {"vis_module": "blocks.2"}),
        ("resnet_depth1", SmallResNet().eval(), torch.rand(2, 3, 16, 16), {"vis_nesting_depth": 1}),
        ("resnet_depth2", SmallResNet().eval(), torch.rand(2, 3, 16, 16), {"vis_nesting_depth": 2}),
        ("resnet_full", SmallResNet().eval(), torch.rand(2, 3, 16, 16), {}),
    ]
    for name, model, x, vis in pictures:
        path = lt.show_model_graph(model, x, vis_outpath=OUT / name, vis_fileformat="png", vis_save_only=True,
                                   random_seed=0, **vis)
        print(path.relative_to(ROOT), path.stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()
