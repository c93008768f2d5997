"""ImageNet weights for the ResNet bodies: which files, how to fetch them, how to load them.

Two file formats load into `ResNetBody`:
  * torchvision ResNet files: a flat state dict with our key names plus `fc.*`;
  * InPlace-ABN ResNet checkpoints (used by PIFS/MiB): {"state_dict": ...} with keys
    `module.mod1.conv1`, `module.mod{2..5}.block{j}.convs.conv1`, `...proj_conv`, `...proj_bn`, and
    `classifier.fc.*`, renamed here to torchvision's names.
The InPlace-ABN weights were trained with leaky_relu(0.01): use them with
`model.activation=leaky_relu` (and model.norm=iabn or bn); relu changes what the network computes.
InPlace-ABN scales by |weight| + eps: plain norm layers load that effective scale (IABN_EPS).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ifss.errors import IfssError
from ifss.models.state_fit import state_misfit


@dataclass(frozen=True)
class WeightsFile:
    url: str
    filename: str
    backbone: str  # the body it loads into
    sha256_prefix: str = ""  # torchvision: first 8 hex digits of the sha256, also in the name
    md5: str = ""
    manual: bool = False  # cannot be fetched by a plain GET; the user places it by hand
    activation: str = "relu"  # the activation it was trained with
    note: str = ""


IMAGENET_WEIGHTS: dict[str, WeightsFile] = {
    "resnet18": WeightsFile(
        "https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18-f37072fd.pth",
        "resnet18", sha256_prefix="f37072fd", note="torchvision ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": WeightsFile(
        "https://download.pytorch.org/models/resnet34-b627a593.pth", "resnet34-b627a593.pth",
        "resnet34", sha256_prefix="b627a593", note="torchvision ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": WeightsFile(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50-0676ba61.pth",
        "resnet50", sha256_prefix="0676ba61", note="torchvision ResNet50_Weights.IMAGENET1K_V1"),
    "resnet101": WeightsFile(
        "https://download.pytorch.org/models/resnet101-63fe2227.pth", "resnet101-63fe2227.pth",
        "resnet101", sha256_prefix="63fe2227", note="torchvision ResNet101_Weights.IMAGENET1K_V1"),
    "resnet101_iabn": WeightsFile(
        "https://drive.google.com/file/d/1oFVSIUYAxa_uNDq2OLkbhyiFmKwnYzpt/view",
        "resnet101_iabn_sync.pth.tar", "resnet101", md5="1552ae0f3d610108df702135f56bd27b",
        manual=True, activation="leaky_relu",
        note="InPlace-ABN 'ResNet101v1, InPlace-ABN sync' (the PIFS/MiB backbone); "
             "use it with model.activation=leaky_relu"),
}


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(path: Path, entry: WeightsFile) -> bool:
    if entry.md5:
        return file_digest(path, "md5") == entry.md5
    if entry.sha256_prefix:
        return file_digest(path, "sha256").startswith(entry.sha256_prefix)
    return True


def fetch_weights(name: str, dest_dir: str | Path, mirror: str | None = None) -> Path:
    """Path of the checked weights file `name` under `dest_dir`, downloading it when needed.

    `mirror` ("http://host:port") replaces the scheme and host of the url (tests, local caches).
    """
    if name not in IMAGENET_WEIGHTS:
        raise IfssError(
            f"no ImageNet weights named {name!r}; valid names: {', '.join(IMAGENET_WEIGHTS)}"
        )
    entry = IMAGENET_WEIGHTS[name]
    dest = Path(dest_dir) / entry.filename
    if dest.is_file() and _matches(dest, entry):
        return dest
    if entry.manual:
        if dest.is_file():
            raise IfssError(
                f"weights file {dest} has the wrong md5 (expected {entry.md5}); download it "
                f"again by hand from {entry.url} and save it as {dest}"
            )
        raise IfssError(
            f"weights file {dest} is missing and cannot be downloaded automatically; download "
            f"it by hand from {entry.url} ({entry.note}) and save it as {dest}"
        )
    from ifss.download import download_file, mirrored_url

    download_file(url=mirrored_url(entry.url, mirror), dest=dest,
                  sha256_prefix=entry.sha256_prefix or None, md5=entry.md5 or None)
    return dest


_IABN_STEM = re.compile(r"^mod1\.(conv1|bn1)\.(.+)$")
_IABN_BLOCK = re.compile(r"^mod([2-5])\.block(\d+)\.(?:convs\.)?(\w+)\.(.+)$")
_IABN_PARTS = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}


def _rename_iabn(key: str) -> str:
    """`mod3.block2.convs.conv1.weight` -> `layer2.1.conv1.weight`; others unchanged."""
    m = _IABN_STEM.match(key)
    if m:
        return f"{m[1]}.{m[2]}"
    m = _IABN_BLOCK.match(key)
    if m:
        layer, block, part, rest = int(m[1]) - 1, int(m[2]) - 1, m[3], m[4]
        return f"layer{layer}.{block}.{_IABN_PARTS.get(part, part)}.{rest}"
    return key


def imagenet_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Body state dict (torchvision names) from the contents of either file format."""
    return _read_state(obj)[0]


def _read_state(obj: object) -> tuple[dict[str, torch.Tensor], bool]:
    """(body state dict in torchvision names, whether the file has InPlace-ABN's layout)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TypeError("not a state dict")
    out, iabn_layout = {}, False
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(("fc.", "classifier.fc.")):
            continue
        renamed = _rename_iabn(key)
        iabn_layout |= renamed != key
        out[renamed] = value
    return out, iabn_layout


# InPlace-ABN scales by |weight| + eps (its layers' eps, 1e-5 in the published ResNets), not by
# weight: a plain norm layer given such a file takes that effective scale, or it would compute
# another network wherever a trained scale is negative.
IABN_EPS = 1e-5


def _as_plain_norm_scales(body: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for name, module in body.named_modules():
        key = f"{name}.weight"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and key in state:
            state[key] = state[key].abs() + IABN_EPS


def _expected_files(backbone: str) -> str:
    names = [e.filename for e in IMAGENET_WEIGHTS.values() if e.backbone == backbone]
    return f"a {backbone} ImageNet file" + (f" such as {' or '.join(names)}" if names else "")


def _missing_file_error(path: Path) -> IfssError:
    entry = next((e for e in IMAGENET_WEIGHTS.values() if e.filename == path.name), None)
    if entry is None:
        how = ("point model.pretrained at a torchvision ResNet or InPlace-ABN ResNet file (see "
               "IMAGENET_WEIGHTS in ifss/models/pretrained.py), or set model.pretrained='' for "
               "random init")
    elif entry.manual:
        how = f"download it by hand from {entry.url} and save it there"
    else:
        how = f"download it from {entry.url} (the workflow's weights rule does this)"
    return IfssError(f"ImageNet weights file {path} does not exist; {how}")


def load_imagenet(body: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights from `path` into `body` (strict apart from num_batches_tracked)."""
    path = Path(path)
    if not path.is_file():
        raise _missing_file_error(path)
    name = getattr(body, "name", type(body).__name__)
    try:
        state, iabn_layout = _read_state(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # unpickling, zip and type errors all mean: not a weights file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise IfssError(
            f"cannot read ImageNet weights file {path} ({reason}); it should be "
            f"{_expected_files(name)} holding only tensors (torch.load weights_only=True)"
        ) from None

    own = body.state_dict()
    state = {k: v for k, v in state.items()
             if k in own or not k.endswith("num_batches_tracked")}
    misfit = state_misfit(own, state, lambda k: k.endswith("num_batches_tracked"))
    if misfit:
        raise IfssError(
            f"ImageNet weights file {path} does not fit backbone {name} "
            f"({misfit}); it expects {_expected_files(name)}"
        )
    if iabn_layout:  # InPlace-ABN layers (model.norm=iabn) take the stored weight as it is
        _as_plain_norm_scales(body, state)
    body.load_state_dict(state, strict=False)
