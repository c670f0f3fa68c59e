"""Distil a teacher into a student inside a plain PyTorch loop (runs in seconds on CPU)."""
import torch
from torch import nn

from kdistill import Distiller

torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randn(512, 20), torch.randint(0, 5, (512,)))
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
teacher = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))  # your trained teacher
student, epochs = nn.Linear(20, 5), 3
kd = Distiller(student, teacher, loss={"temperature": {"kind": "cosine", "start": 8, "end": 2},
                                       "soft_weight": 0.7, "hard_weight": 0.3}, total_steps=epochs * len(loader))
opt = torch.optim.SGD([*student.parameters(), *kd.parameters()], lr=0.1)  # kd's: feature connectors
for epoch in range(epochs):
    for inputs, labels in loader:
        out = kd({"inputs": inputs, "labels": labels})  # mean over the batch; schedules step per call
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    print(f"epoch {epoch}: loss {out.loss.item():.4f}, T {out.hparams['temperature']:.2f}, "
          f"soft {out.terms['soft'].item():.4f}, hard {out.terms['hard'].item():.4f}")
kd.export_student("student.safetensors")
