"""Show adapt(), param_groups() and freezing on a real torchvision ResNet18 (no network needed).

Run with ``make demo`` or ``python examples/adapt_demo.py``. The reference FashionMNIST
example (examples/fashion_resnet18.py) is tracked in its own issue.
"""

import torch
import torchvision

import transferkit as tk

torch.manual_seed(0)
model = torchvision.models.resnet18()  # ImageNet weights cannot be downloaded offline
tk.adapt(model, num_classes=10, in_chans=1)  # grey FashionMNIST-style input, 10 classes
info = tk.get_info(model)
print(f"head: {info.heads}  input layers: {info.input_layers}  classes: "
      f"{info.original_num_classes} -> {info.num_classes}")
print(f"normalise with mean={info.mean} std={info.std}")
print(f"output shape for a grey batch: {tuple(model(torch.rand(4, 1, 28, 28)).shape)}")

groups = tk.param_groups(model, head_lr=1e-2, body_lr=1e-3, weight_decay=0.05, layer_decay=0.7)
print(tk.param_groups_table(groups))
tk.freeze(model, "stages:2", bn="frozen")
print(tk.freezing_summary(model))
