"""``functional_residuals``: blocks that write into their residual input in place (``x += f(norm(x))``, as FLUX's,
CLIP's and T5's blocks do) train, with and without gradient checkpointing, eagerly and under torch.compile, with
the gradients of the same maths written out-of-place; the residual keeps its dtype."""
from __future__ import annotations

import pytest
import torch

from trainer.adapter.autograd import functional_residuals, gradient_checkpointing


class Block(torch.nn.Module):
    def __init__(self, width, inplace=True):
        super().__init__()
        # a Linear named attn: what makes a list of these a list of transformer blocks (families.blocks)
        self.norm, self.attn, self.inplace = torch.nn.LayerNorm(width), torch.nn.Linear(width, width), inplace

    def forward(self, x):
        if self.inplace:
            x += self.attn(self.norm(x))
            return x
        return x + self.attn(self.norm(x))


class Model(torch.nn.Module):
    def __init__(self, inplace=True):
        super().__init__()
        torch.manual_seed(0)
        self.double_blocks = torch.nn.ModuleList(Block(16, inplace) for _ in range(3))

    def forward(self, x):
        for b in self.double_blocks:
            x = b(x)
        return x


def _grads(model, compiled, checkpointing):
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with functional_residuals(model), gradient_checkpointing(model, checkpointing):
        run = torch.compile(model, backend="eager") if compiled else model
        run(x).pow(2).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_in_place_blocks_train_like_out_of_place_ones(compiled, checkpointing):
    reference = _grads(Model(inplace=False), False, False)
    got = _grads(Model(inplace=True), compiled, checkpointing)
    for a, b in zip(got, reference):
        assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())


class UpcastBlock(torch.nn.Module):
    """An fp16 residual stream updated by an fp32 computation: ``+=`` keeps fp16."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        x += self.lin(x.float())
        return x


def test_the_residual_keeps_its_dtype():
    holder = torch.nn.Module()
    holder.double_blocks = torch.nn.ModuleList([UpcastBlock()])
    x = torch.randn(1, 8).half()
    with functional_residuals(holder), torch.enable_grad():
        out = holder.double_blocks[0](x)
    assert out.dtype == torch.float16 and type(out) is torch.Tensor
    assert torch.equal(x, x.clone())  # (the input itself was not written)
