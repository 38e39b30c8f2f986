"""One bf16 autocast + GradScaler + FP32-master AdamW step on the CPU with the ampkit this Python imports.

Prints: the file ampkit was imported from, whether the loss is finite, whether every parameter
changed, and whether CUDA kernels were compiled. Used by tests/python/test_build.py and
scripts/check_wheel_on_python.sh to show that an installed ampkit works.
"""
import ampkit
import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
before = [p.detach().clone() for p in model.parameters()]
optimizer = ampkit.optim.AdamW(model.parameters(), lr=1e-2)
scaler = ampkit.GradScaler("cpu")
with ampkit.autocast("cpu", dtype=torch.bfloat16):
    loss = torch.nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 2, (32,)))
scaler.scale(loss).backward()
scaler.step(optimizer)
scaler.update()
changed = all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
print(ampkit.__file__, bool(torch.isfinite(loss)), changed, ampkit.build_info()["cuda"])
