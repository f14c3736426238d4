"""Distillation in plain PyTorch: a wide CNN teacher, a narrow student, feature pairs and logits.

Run: python examples/plain_pytorch_distill.py
"""

import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.experiments import DigitsCNN, DigitsDataModule

data = DigitsDataModule(batch_size=64)


def train(model, epochs, kd=None):
    params = [*model.parameters(), *(kd.parameters() if kd is not None else [])]  # adapters train too
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for _ in range(epochs):
        model.train()
        for x, y in data.train_dataloader():
            loss = F.cross_entropy(model(x), y) if kd is None else None
            if kd is not None:
                # kd runs the student (tapped) and the teacher (eval, no_grad) once each.
                extra, terms = kd(x)
                loss = F.cross_entropy(kd.student_output, y) + extra
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def test_accuracy(model):
    model.eval()
    x, y = data.test_set.tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


torch.manual_seed(0)
teacher = train(DigitsCNN(channels=[16, 32, 64]), epochs=3).eval()
print(f"teacher accuracy: {test_accuracy(teacher):.3f}")

torch.manual_seed(1)
baseline = train(DigitsCNN(channels=[4, 8, 16]), epochs=4)
torch.manual_seed(1)
student = DigitsCNN(channels=[4, 8, 16])
kd = lt.Distillation(teacher, student, pairs={"blocks.1": "blocks.1", "blocks.2": "blocks.2"},
                     logits_loss=lt.losses.kd_kl(temperature=4.0), example_input=data.example_batch()[0])
print("adapters (student -> teacher channels):", [tuple(p.shape) for p in kd.parameters() if p.dim() == 4])
train(student, epochs=4, kd=kd)
print(f"student without distillation: {test_accuracy(baseline):.3f}")
print(f"student with distillation:    {test_accuracy(student):.3f}")
