"""A small GPT-style language model and a locally generated corpus, shared by the transformer
example and the end-to-end benchmark.

The corpus is produced by a seeded generator from a small grammar, so it needs no download and
has real structure for the model to learn (agreement, word order, punctuation).
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn
from torch.nn import functional as F

import ampkit

SUBJECTS = ["the cat", "a dog", "my neighbour", "the old sailor", "every student", "the small robot", "our teacher"]
VERBS = ["sees", "likes", "follows", "builds", "paints", "remembers", "finds"]
OBJECTS = ["a red boat", "the quiet river", "two bright stars", "an empty house", "the long road", "seven apples"]
ENDINGS = [".", " today.", " at night.", " again.", " in the rain.", " with great care."]


def generate_corpus(characters: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < characters:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)} "
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)[:characters]


class CharDataset:
    """Next-character prediction windows over the corpus, as (inputs, targets) tensors."""

    def __init__(self, text: str, context: int) -> None:
        self.vocabulary = sorted(set(text))
        index = {c: i for i, c in enumerate(self.vocabulary)}
        data = torch.tensor([index[c] for c in text], dtype=torch.long)
        windows = (len(data) - 1) // context
        self.inputs = data[: windows * context].view(windows, context)
        self.targets = data[1: windows * context + 1].view(windows, context)

    def split(self, fraction: float = 0.9):
        cut = int(len(self.inputs) * fraction)
        return (self.inputs[:cut], self.targets[:cut]), (self.inputs[cut:], self.targets[cut:])


class Block(nn.Module):
    def __init__(self, width: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        if fused:
            # bias + GELU run in the GEMM's epilogue (cuBLASLt on CUDA).
            self.mlp = nn.Sequential(ampkit.nn.FusedLinear(width, 4 * width, activation="gelu"),
                                     ampkit.nn.FusedLinear(4 * width, width))
        else:
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        attention = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(attention.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocabulary: int, context: int, width: int = 128, layers: int = 2, heads: int = 4,
                 fused: bool = True) -> None:
        super().__init__()
        self.token = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(torch.zeros(context, width))
        self.blocks = nn.Sequential(*[Block(width, heads, fused) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocabulary, bias=False)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.blocks(x)))


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
