"""A short hash that identifies a model's weights: every file onejump writes for a model records it."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash identifying a model's weights.

    Hashes every parameter's name and shape and a strided sample of up to 4096 of its values,
    rounded to bfloat16 so that the same weights loaded in fp32, bf16 or on another device agree.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not torch.is_floating_point(tensor):
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step][:4096].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
