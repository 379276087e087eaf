"""Tiny networks for the CPU checks: an MLP and a small CNN for 8×8 digits, each with N linear heads, and
a tiny fully convolutional segmentation net (SegNet) with per-pixel heads.

Every model returns `Outputs(logits, heads, features)` so multi-head losses (DHKD's auxiliary head,
BUAL's negative-learning head) read `outputs.heads[1]` without special cases; `logits` is head 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from llmkit.vision import VisionError


class Outputs(NamedTuple):
    """What every llmkit.vision model returns.

    logits:   head 0's logits [N, K] (the head used for prediction).
    heads:    all heads' logits, a tuple (head 0 first).
    features: the shared penultimate representation [N, D] (for kNN scores, embeddings).
    """

    logits: torch.Tensor
    heads: tuple[torch.Tensor, ...]
    features: torch.Tensor


def _make_heads(feature_dim: int, num_classes: int, num_heads: int, head_classes, nonlinear_aux: bool) -> nn.ModuleList:
    if num_heads < 1:
        raise VisionError(f"num_heads must be >= 1, got {num_heads}")
    head_classes = [num_classes] * num_heads if head_classes is None else list(head_classes)
    if len(head_classes) != num_heads:
        raise VisionError(f"head_classes has {len(head_classes)} entries for {num_heads} heads")
    heads = [nn.Linear(feature_dim, head_classes[0])]
    for k in head_classes[1:]:
        if nonlinear_aux:
            # DHKD's CIFAR auxiliary head: Linear -> Dropout 0.1 -> BN -> ReLU -> Linear.
            heads.append(
                nn.Sequential(
                    nn.Linear(feature_dim, 200), nn.Dropout(0.1), nn.BatchNorm1d(200), nn.ReLU(), nn.Linear(200, k)
                )
            )
        else:
            heads.append(nn.Linear(feature_dim, k))
    return nn.ModuleList(heads)


class MLP(nn.Module):
    """Fully connected net: in_dim → hidden… (ReLU) → one or more linear heads.

    `head_classes` lets heads differ in size (e.g. a C+1-way detector head); `nonlinear_aux` makes
    heads 1.. small MLPs as in DHKD.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden=(128, 128),
        num_heads: int = 1,
        head_classes=None,
        nonlinear_aux: bool = False,
    ):
        super().__init__()
        layers, width = [], in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = width
        self.heads = _make_heads(width, num_classes, num_heads, head_classes, nonlinear_aux)

    def forward(self, x: torch.Tensor) -> Outputs:
        """Flatten the input, run the backbone and every head."""
        features = self.backbone(x.flatten(1))
        heads = tuple(head(features) for head in self.heads)
        return Outputs(heads[0], heads, features)


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks for 1×8×8 inputs (flat 64-vectors are reshaped), then linear heads."""

    def __init__(
        self,
        num_classes: int,
        channels: int = 16,
        num_heads: int = 1,
        head_classes=None,
        nonlinear_aux: bool = False,
        side: int = 8,
    ):
        super().__init__()
        self.side = side
        self.backbone = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.feature_dim = 2 * channels * 4
        self.heads = _make_heads(self.feature_dim, num_classes, num_heads, head_classes, nonlinear_aux)

    def forward(self, x: torch.Tensor) -> Outputs:
        """Reshape flat inputs to images, run the conv backbone and every head."""
        if x.dim() == 2:
            x = x.view(-1, 1, self.side, self.side)
        features = self.backbone(x)
        heads = tuple(head(features) for head in self.heads)
        return Outputs(heads[0], heads, features)


class SegNet(nn.Module):
    """Tiny fully convolutional segmentation net (a DeepLab-style toy) for [B, C_in, H, W] images (H, W even).

    stem: 3×3 conv (C_in → c), 3×3 stride-2 conv (c → 2c); then one 3×3 conv (2c → 2c) per entry of
    `dilations`. Head 0 (main) is a 1×1 conv on the last block; heads 1.. (auxiliary, as DeepLab's on layer 3)
    are 1×1 convs on the output of block `aux_block` (default: the second-to-last block, or the stem). Every
    head's logits are upsampled bilinearly to the input size: `Outputs(logits [B, K, H, W], heads,
    features [B, 2c, H/2, W/2])`.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 16,
        dilations=(2, 4),
        num_heads: int = 1,
        in_channels: int = 1,
        aux_block: int | None = None,
    ):
        super().__init__()
        if num_heads < 1:
            raise VisionError(f"num_heads must be >= 1, got {num_heads}")
        width = 2 * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=d, dilation=d), nn.ReLU()) for d in dilations
        )
        self.aux_block = len(self.blocks) - 2 if aux_block is None else aux_block
        if not -1 <= self.aux_block < len(self.blocks):
            raise VisionError(f"aux_block must be in [-1, {len(self.blocks) - 1}] (-1 = the stem), got {aux_block}")
        self.heads = nn.ModuleList(nn.Conv2d(width, num_classes, 1) for _ in range(num_heads))
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> Outputs:
        """Run stem and blocks; main head on the last block, auxiliary heads on block `aux_block`."""
        if x.dim() != 4:
            raise VisionError(f"SegNet expects images [B, C, H, W], got {tuple(x.shape)}")
        features = self.stem(x)
        aux_features = features
        for i, block in enumerate(self.blocks):
            features = block(features)
            if i == self.aux_block:
                aux_features = features
        up = lambda z: F.interpolate(z, size=x.shape[2:], mode="bilinear", align_corners=False)
        heads = (up(self.heads[0](features)),) + tuple(up(head(aux_features)) for head in self.heads[1:])
        return Outputs(heads[0], heads, features)


class LabelWiseMLP(nn.Module):
    """Multi-label MLP with label-wise embeddings (L2D's CPU stand-in for an ML-Decoder head).

    backbone → Linear(h → K·d) reshaped to embeddings e_ik [N, K, d]; logit_ik = ⟨e_ik, w_k⟩ + b_k.
    `features` of the output are the embeddings [N, K, d].
    """

    def __init__(self, in_dim: int, num_labels: int, hidden=(128,), embed_dim: int = 16):
        super().__init__()
        layers, width = [], in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.backbone = nn.Sequential(*layers)
        self.num_labels, self.embed_dim = num_labels, embed_dim
        self.embed = nn.Linear(width, num_labels * embed_dim)
        self.label_weight = nn.Parameter(torch.randn(num_labels, embed_dim) / embed_dim**0.5)
        self.label_bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, x: torch.Tensor) -> Outputs:
        """Label-wise embeddings and their per-label logits."""
        emb = self.embed(self.backbone(x.flatten(1))).view(-1, self.num_labels, self.embed_dim)
        logits = (emb * self.label_weight).sum(-1) + self.label_bias
        return Outputs(logits, (logits,), emb)


def as_outputs(value) -> Outputs:
    """Accept a model output or a bare logits tensor and return `Outputs` (so losses take either)."""
    if isinstance(value, Outputs):
        return value
    if isinstance(value, torch.Tensor):
        return Outputs(value, (value,), value)
    raise VisionError(f"expected Outputs or a logits tensor, got {type(value).__name__}")
