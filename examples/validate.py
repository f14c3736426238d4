"""Check that captured activations are exactly what the model computes.

``validate_model_activations`` replays every logged operation from its saved inputs
and perturbs parents to check that each saved tensor really fed its children.

Run: python examples/validate.py
"""

import torch

import lens_train as lt
from lens_train.experiments import DigitsCNN, DigitsMLP, RowTransformer

x = torch.rand(4, 1, 8, 8)
# Training mode (BatchNorm on batch statistics) and eval mode both validate.
for model in (DigitsCNN(), DigitsMLP().eval(), RowTransformer()):
    ok = lt.validate_model_activations(model, x, random_seed=0)
    print(f"{type(model).__name__:<15} valid: {ok}")
    assert ok

# verbose=True prints what was checked (and, on failure, the first op that failed and why).
lt.validate_model_activations(DigitsCNN(), x, verbose=True, random_seed=0)
