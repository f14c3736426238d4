"""A plain PyTorch training loop with taps: deep supervision on a middle block, and probes.

``lt.Taps`` makes the activations of the forward pass you already run available with
their gradients, so an auxiliary loss on them trains the model. No second pass.

Run: python examples/plain_pytorch_taps.py
"""

import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.experiments import DigitsCNN, DigitsDataModule

torch.manual_seed(0)
data = DigitsDataModule(batch_size=64)
model = DigitsCNN()
x0, _ = data.example_batch()

# Auxiliary heads are built from an example before the optimizer exists, so it trains them.
aux = lt.AuxiliaryLoss({"blocks.1": lt.losses.deep_supervision(num_classes=10)}, weights={"blocks.1": 0.3},
                       model=model, example_input=x0)
probes = lt.Probes(["blocks.0", "blocks.1", "blocks.2"], num_classes=10, pool="flatten", lr=0.01)
taps = lt.Taps(model, [*aux.layers, *probes.layers])
optimizer = torch.optim.Adam([*model.parameters(), *aux.parameters()], lr=3e-3)

for epoch in range(3):
    model.train()
    for step, (x, y) in enumerate(data.train_dataloader()):
        with taps:                        # the model's own forward pass, tapped
            logits = model(x)
        task = F.cross_entropy(logits, y)
        extra, terms = aux(taps, targets=y)
        optimizer.zero_grad()
        (task + extra).backward()         # gradients flow into blocks.1 through the tap
        optimizer.step()
        probes.update(taps, y)            # detached: probes never change the model
    accuracy = probes.compute()
    probes.reset()
    print(f"epoch {epoch}: task loss {task.item():.3f}, aux {terms['blocks.1'].item():.3f}, probe accuracy "
          + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))

model.eval()
x, y = data.test_set.tensors
with torch.no_grad():
    test_acc = (model(x).argmax(1) == y).float().mean().item()
print(f"test accuracy: {test_acc:.3f}")
assert test_acc > 0.8
