"""Save a capture as a portable bundle (safetensors + JSON, no pickle) and load it lazily.

Run: python examples/bundle_save_load.py [output_dir]
"""

import sys
from pathlib import Path

import torch

import lens_train as lt
from lens_train.experiments import DigitsCNN

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example_outputs")
model = DigitsCNN().eval()
x = torch.rand(16, 1, 8, 8)

log = lt.log_forward_pass(model, x, random_seed=0)
lt.save(log, out / "cnn_bundle")
print("bundle files:", sorted(p.name for p in (out / "cnn_bundle").iterdir()))

# lazy=True reads only the metadata: lookup, printing and graphs work without the tensors.
lazy = lt.load(out / "cnn_bundle", lazy=True)
layer = lazy["blocks.2"]
print(layer.layer_label, tuple(layer.tensor_shape), "loaded:", layer.activation is not None)

# One tensor is read (and its checksum verified) when asked for.
value = layer.materialize_activation()
assert torch.equal(value, log["blocks.2"].activation)
print("materialized", layer.layer_label, "equal to the original:", torch.equal(value, log["blocks.2"].activation))

# An eager load reads everything at once.
full = lt.load(out / "cnn_bundle")
assert all(torch.equal(a.activation, b.activation) for a, b in zip(full, log) if a.activation is not None)
print("eager load:", len(full), "layers, every activation equal")
