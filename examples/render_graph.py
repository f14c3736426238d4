"""Draw a model's computational graph, unrolled and rolled.

Run: python examples/render_graph.py [output_dir]
Writes SVG files; open them in a browser.
"""

import sys
from pathlib import Path

import torch
from torch import nn

import lens_train as lt
from lens_train.experiments import DigitsCNN

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example_outputs")
out.mkdir(parents=True, exist_ok=True)


class Recurrent(nn.Module):
    """One linear layer applied three times: a loop the rolled view draws as one node (x3)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.tanh(self.cell(x))
        return x


x = torch.randn(2, 1, 8, 8)
cnn = lt.show_model_graph(DigitsCNN(), x, vis_opt="unrolled", vis_outpath=out / "cnn", vis_save_only=True)
print("unrolled CNN graph:", cnn)

# Collapse modules deeper than one level into single boxes: a quick overview of a big model.
overview = lt.show_model_graph(DigitsCNN(), x, vis_opt="unrolled", vis_nesting_depth=1,
                               vis_outpath=out / "cnn_overview", vis_save_only=True)
print("nesting depth 1:", overview)

rnn = Recurrent()
for mode in ("unrolled", "rolled"):
    path = lt.show_model_graph(rnn, torch.randn(1, 8), vis_opt=mode, vis_outpath=out / f"recurrent_{mode}",
                               vis_save_only=True)
    print(f"{mode} recurrent graph:", path)

# A log you already have renders too, without running the model again.
log = lt.log_forward_pass(rnn, torch.randn(1, 8), layers_to_save=None)
assert "(x3)" in log.to_dot(vis_opt="rolled")
print("the rolled DOT source marks the loop with (x3)")
