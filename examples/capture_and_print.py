"""Capture every operation of one forward pass and look at it.

Run: python examples/capture_and_print.py
"""

import torch

import lens_train as lt
from lens_train.experiments import DigitsCNN, DigitsDataModule

torch.manual_seed(0)
model = DigitsCNN(channels=[8, 16, 32]).eval()
images, labels = DigitsDataModule().example_batch(4)   # four real 8x8 digits, (4, 1, 8, 8)

log = lt.log_forward_pass(model, images, random_seed=0)
print(log)                                    # summary, module hierarchy, every layer

# One layer, three ways: its label, its short label, the module that produced it.
relu = log["relu_2"]
assert relu is log["blocks.1.2"] is log[relu.layer_index]
print(relu)

# Saved activations are the real values: compare with the model's own output.
assert torch.equal(log[-1].activation, model(images))
print("output layer:", log[-1].layer_label, tuple(log[-1].tensor_shape))
print("labels of the batch:", labels.tolist())

# Save only what you need: a few layers by module address or label.
small = lt.log_forward_pass(model, images, layers_to_save=["blocks.0", "linear_1"], random_seed=0)
saved = [layer.layer_label for layer in small if layer.activation is not None]
print("saved only:", saved)
