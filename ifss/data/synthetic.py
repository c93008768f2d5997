"""The embedded synthetic benchmark: 20 procedurally drawn object classes in the PASCAL VOC layout.

Why it exists: the demo and the tests must run every code path that reads VOC on a CPU-only
machine in minutes, without downloads. So the dataset is written in the VOC 2012 devkit layout
(``JPEGImages``, palette PNGs in ``SegmentationClassAug`` with 255 = void, ``ImageSets``) and the
readers take it unchanged.

Why it looks the way it does: each class is a (colour, shape, texture) triple, so a small CNN can
learn it from 64x64 images, but four pairs of classes differ in one attribute only (near colours
or similar shapes; see ``CONFUSABLE_PAIRS``), so learning a novel class from a few shots next to
its look-alike base class is hard but possible. Backgrounds are low-contrast noise and gradients,
objects get colour jitter and pixel noise, and later objects occlude earlier ones, so no pixel is
classified by a colour threshold alone. Each class has an attribute vector
(``class_attributes.npy``) that stands in for word embeddings: similar classes get similar vectors.

Every image is drawn from its own generator seeded by (seed, split, index), so the same arguments
give byte-identical files whatever the order of generation.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from ifss.errors import IfssError

SYNTHETIC_VERSION = 1

COLOURS = {  # RGB; red/orange and green/lime are the deliberately near pairs
    "red": (215, 35, 35),
    "orange": (230, 100, 25),
    "yellow": (235, 215, 35),
    "green": (35, 165, 55),
    "lime": (120, 205, 40),
    "cyan": (35, 200, 215),
    "blue": (40, 80, 225),
    "purple": (135, 45, 205),
    "magenta": (225, 45, 175),
    "white": (240, 240, 235),
}
SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "hexagon")
TEXTURES = ("solid", "striped", "checker", "dotted")

# Class id -> (colour, shape, texture); index 0 is background. Look-alike partners sit in different
# PASCAL-5i folds and straddle the 15-5 and 10-10 splits, so some novel classes meet a base twin.
CLASS_SPECS = (
    None,
    ("red", "disc", "solid"),          # 1  ~ 16 (near colour)
    ("yellow", "triangle", "striped"),
    ("green", "cross", "solid"),       # 3  ~ 12 (near colour)
    ("blue", "square", "checker"),
    ("magenta", "ring", "solid"),
    ("cyan", "hexagon", "dotted"),
    ("purple", "disc", "striped"),     # 7  ~ 18 (similar shape)
    ("white", "triangle", "checker"),
    ("orange", "square", "dotted"),    # 9  ~ 14 (similar shape)
    ("blue", "ring", "striped"),
    ("yellow", "diamond", "solid"),
    ("lime", "cross", "solid"),        # 12
    ("magenta", "square", "striped"),
    ("orange", "diamond", "dotted"),   # 14
    ("cyan", "triangle", "solid"),
    ("orange", "disc", "solid"),       # 16
    ("green", "ring", "checker"),
    ("purple", "hexagon", "striped"),  # 18
    ("red", "cross", "dotted"),
    ("white", "disc", "checker"),
)
CLASS_NAMES = ("background",) + tuple("_".join(spec) for spec in CLASS_SPECS[1:])
NUM_CLASSES = len(CLASS_NAMES)  # 21, background included
CONFUSABLE_PAIRS = ((1, 16), (3, 12), (7, 18), (9, 14))
VOID = 255

MAX_OBJECTS = 4
TEXTURE_SHADE = 0.45  # brightness of the dark parts of a texture, relative to the object colour
# Rotation range per shape: square and diamond only differ by 45 degrees, so they stay near upright.
MAX_ROTATION_DEG = {"square": 15.0, "diamond": 15.0}
_SPLIT_CODES = {"train": 0, "val": 1}
_META_PARAMETERS = ("version", "seed", "size", "n_train", "n_val")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map as 768 ints (256 RGB triples), for ``Image.putpalette``."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):  # spread the index bits over the high bits of r, g, b
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


_PALETTE = voc_palette()


# ----------------------------------------------------------------------------- class attributes

def attribute_names() -> list[str]:
    """Names of the attribute columns: one-hot shape, colour, texture, then the colour's RGB."""
    return ([f"shape={s}" for s in SHAPES] + [f"colour={c}" for c in COLOURS]
            + [f"texture={t}" for t in TEXTURES] + ["rgb_r", "rgb_g", "rgb_b"])


def class_attributes() -> np.ndarray:
    """(21, D) float32 attribute matrix; row 0 (background) is zero. RGB in [0, 1] makes near
    colours near in this space, not only equal-or-different."""
    colours = list(COLOURS)
    rows = [np.zeros(len(attribute_names()), np.float32)]
    for colour, shape, texture in CLASS_SPECS[1:]:
        row = np.concatenate([
            np.eye(len(SHAPES), dtype=np.float32)[SHAPES.index(shape)],
            np.eye(len(colours), dtype=np.float32)[colours.index(colour)],
            np.eye(len(TEXTURES), dtype=np.float32)[TEXTURES.index(texture)],
            np.asarray(COLOURS[colour], np.float32) / 255.0,
        ])
        rows.append(row)
    return np.stack(rows)


# ----------------------------------------------------------------------------- drawing

def _regular_polygon(u, v, sides: int, phase: float):
    """Inside test of a regular polygon of circumradius 1: every edge's half-plane."""
    apothem = np.cos(np.pi / sides)
    inside = np.ones(u.shape, bool)
    for k in range(sides):
        angle = phase + 2 * np.pi * k / sides
        inside &= u * np.cos(angle) + v * np.sin(angle) <= apothem
    return inside


def _shape_mask(shape: str, u, v):
    """Boolean mask of ``shape`` in unit coordinates (about radius 1, sizes tuned to similar areas).
    ``v`` points down the image, so the triangle's bottom edge has its normal at +90 degrees."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        return (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55 ** 2)
    if shape == "square":
        return np.maximum(abs(u), abs(v)) <= 0.8
    if shape == "diamond":
        return abs(u) + abs(v) <= 1.1
    if shape == "triangle":
        return _regular_polygon(u / 1.2, v / 1.2, 3, np.pi / 2)
    if shape == "hexagon":
        return _regular_polygon(u / 1.05, v / 1.05, 6, 0.0)
    if shape == "cross":
        arm = 0.33
        return ((abs(u) <= arm) & (abs(v) <= 1.0)) | ((abs(v) <= arm) & (abs(u) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _texture_mask(texture: str, u, v, period: float, phase):
    """Where the texture darkens the object, in object-frame pixel coordinates (so it rotates with
    the object and keeps its period whatever the object's scale)."""
    pu, pv = (u + phase[0]) % period, (v + phase[1]) % period
    half = period / 2
    if texture == "solid":
        return np.zeros(u.shape, bool)
    if texture == "striped":
        return pu < half
    if texture == "checker":
        return (pu < half) != (pv < half)
    if texture == "dotted":
        return (pu - half) ** 2 + (pv - half) ** 2 <= (0.27 * period) ** 2
    raise ValueError(f"unknown texture {texture!r}")


def _interpolation_matrix(cells: int, size: int) -> np.ndarray:
    """(size, cells) matrix that linearly upsamples a vector of ``cells`` values to ``size``."""
    positions = np.linspace(0, cells - 1, size)
    return np.stack([np.interp(positions, np.arange(cells), np.eye(cells)[j])
                     for j in range(cells)], axis=1)


def _smooth_noise(rng, size: int, cells: int, amplitude: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly to (size, size)."""
    upsample = _interpolation_matrix(cells, size)
    return upsample @ rng.normal(0.0, amplitude, (cells, cells)) @ upsample.T


def _background(rng, size: int) -> np.ndarray:
    """Low-contrast, desaturated background: a tinted grey, a gradient and noise at two scales."""
    grey = rng.uniform(70, 160)
    tint = rng.normal(0.0, 10.0, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / size
    gradient = rng.uniform(10, 35) * (xs * np.cos(angle) + ys * np.sin(angle) - 0.5)
    luminance = (grey + gradient + _smooth_noise(rng, size, 4, 10.0)
                 + _smooth_noise(rng, size, max(2, size // 6), 5.0))
    return luminance[..., None] + tint


def _object_frame(size: int, centre, angle: float):
    """Pixel-centre coordinates relative to ``centre``, rotated into the object's frame."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _place(rng, size: int, radius: float, placed: list) -> tuple[float, float]:
    """A centre that overlaps earlier objects only partly (a few tries, then the last one), so
    occlusion happens without burying whole objects."""
    low, high = 0.15 * size, 0.85 * size
    for _ in range(8):
        centre = rng.uniform(low, high, 2)
        if all(np.hypot(*(centre - c)) >= 0.6 * (radius + r) for c, r in placed):
            break
    return float(centre[0]), float(centre[1])


def _object_colour(rng, colour: str) -> np.ndarray:
    """The class colour with a brightness and per-channel jitter, so colour alone is not a label."""
    return np.asarray(COLOURS[colour], float) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, 3)


def _draw_object(rng, canvas, size: int, class_id: int, placed: list):
    """Paint one object of ``class_id`` onto ``canvas`` in place; return its mask."""
    colour, shape, texture = CLASS_SPECS[class_id]
    radius = rng.uniform(6, 16) * size / 64  # 12-32 px across at 64x64
    centre = _place(rng, size, radius, placed)
    placed.append((np.asarray(centre), radius))
    max_rotation = np.deg2rad(MAX_ROTATION_DEG.get(shape, 180.0))
    u, v = _object_frame(size, centre, rng.uniform(-max_rotation, max_rotation))
    mask = _shape_mask(shape, u / radius, v / radius)
    period = max(4.0, 6.0 * size / 64)
    dark = _texture_mask(texture, u, v, period, rng.uniform(0, period, 2))
    shade = np.where(dark, TEXTURE_SHADE, 1.0)[..., None]
    pixels = shade * _object_colour(rng, colour) + rng.normal(0, rng.uniform(3, 9), canvas.shape)
    canvas[mask] = pixels[mask]
    return mask


def _inner_border(instances: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another instance (or background): VOC's void outline."""
    border = np.zeros(instances.shape, bool)
    differs_vertically = instances[1:, :] != instances[:-1, :]
    differs_horizontally = instances[:, 1:] != instances[:, :-1]
    border[1:, :] |= differs_vertically
    border[:-1, :] |= differs_vertically
    border[:, 1:] |= differs_horizontally
    border[:, :-1] |= differs_horizontally
    return border & (instances > 0)


def _object_classes(rng, index: int) -> list[int]:
    """1-4 distinct classes in drawing order. Image ``index`` always holds class index % 20 + 1,
    which balances the per-class image counts without depending on any other image."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    anchor = index % (NUM_CLASSES - 1) + 1
    others = [c for c in range(1, NUM_CLASSES) if c != anchor]
    classes = [anchor] + [int(c) for c in rng.choice(others, count - 1, replace=False)]
    return [classes[i] for i in rng.permutation(count)]


def render_sample(rng, size: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its label map (size, size) uint8 in {0..20, 255}."""
    canvas = _background(rng, size)
    instances = np.zeros((size, size), np.int64)
    classes = _object_classes(rng, index)
    placed = []
    for instance, class_id in enumerate(classes, start=1):
        instances[_draw_object(rng, canvas, size, class_id, placed)] = instance
    label = np.asarray([0] + classes, np.uint8)[instances]
    label[_inner_border(instances)] = VOID
    canvas += rng.normal(0, 4.0, canvas.shape)  # sensor noise over everything
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), label


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


# ----------------------------------------------------------------------------- writing

def _write_sample(root: Path, sample_id: str, image: np.ndarray, label: np.ndarray) -> None:
    Image.fromarray(image, "RGB").save(root / "JPEGImages" / f"{sample_id}.jpg", quality=90)
    label_image = Image.fromarray(label)  # "L"; putpalette turns it into a "P" image
    label_image.putpalette(_PALETTE)
    label_image.save(root / "SegmentationClassAug" / f"{sample_id}.png")


def _write_split(root: Path, split: str, count: int, seed: int, size: int) -> list[int]:
    """Write one split's images, labels and id list; return its per-class image counts."""
    ids, class_counts = [], np.zeros(NUM_CLASSES, np.int64)
    for index in range(count):
        sample_id = f"s_{split}_{index + 1:06d}"
        image, label = render_sample(_sample_rng(seed, split, index), size, index)
        _write_sample(root, sample_id, image, label)
        present = np.unique(label)
        class_counts[present[present != VOID]] += 1
        ids.append(sample_id)
    list_name = "train_aug.txt" if split == "train" else "val.txt"
    (root / "ImageSets" / "Segmentation" / list_name).write_text("\n".join(ids) + "\n")
    return class_counts.tolist()


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def _write_classes(root: Path) -> None:
    attributes = class_attributes()
    _write_json(root / "classes.json", {"names": list(CLASS_NAMES),
                                        "attribute_names": attribute_names(),
                                        "attributes": attributes.tolist()})
    np.save(root / "class_attributes.npy", attributes)


def _requested(seed: int, n_train: int, n_val: int, size: int) -> dict:
    return {"version": SYNTHETIC_VERSION, "seed": int(seed), "size": int(size),
            "n_train": int(n_train), "n_val": int(n_val)}


def _existing_matches(out: Path, requested: dict) -> bool:
    """True if ``out`` already holds this dataset; False if it is absent or an empty folder;
    otherwise raise, since overwriting someone's folder is never the right guess."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        meta = json.loads((out / "meta.json").read_text())
        if all(meta.get(key) == value for key, value in requested.items()):
            return True
    except (OSError, ValueError):
        pass
    wanted = ", ".join(f"{key}={value}" for key, value in requested.items())
    raise IfssError(f"{out} already exists and is not the synthetic dataset with {wanted}; "
                    "delete it or pick another --out.")


def _check_arguments(seed: int, n_train: int, n_val: int, size: int) -> None:
    if seed < 0:
        raise IfssError(f"seed must be >= 0 (got {seed}); pass a non-negative --seed.")
    if n_train < 1 or n_val < 1:
        raise IfssError(f"n_train and n_val must be >= 1 (got {n_train}, {n_val}); "
                        "pass positive counts.")
    if size < 32:
        raise IfssError(f"size must be >= 32 pixels (got {size}); pass a larger --size.")


def generate(out: str | Path, seed: int = 0, n_train: int = 1600, n_val: int = 320,
             size: int = 64) -> Path:
    """Write the synthetic benchmark to ``out`` (VOC layout) and return ``out``.

    Nothing is done if ``out`` already holds the dataset for these arguments. The files are written
    into a temporary sibling folder renamed onto ``out`` at the end, so an interrupted run never
    leaves a folder that looks complete.
    """
    _check_arguments(seed, n_train, n_val, size)
    out = Path(out).absolute()
    requested = _requested(seed, n_train, n_val, size)
    if _existing_matches(out, requested):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # a unique hidden sibling (not tempfile.mkdtemp: its 0700 mode would survive the rename)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _write_dataset(staging, requested)
        os.replace(staging, out)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if _concurrent_run_finished(out, requested):
            return out
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_dataset(root: Path, requested: dict) -> None:
    """Every file of the dataset, into the empty folder ``root``."""
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    seed, size = requested["seed"], requested["size"]
    counts = {split: _write_split(root, split, requested[f"n_{split}"], seed, size)
              for split in ("train", "val")}
    _write_classes(root)
    _write_json(root / "meta.json", {
        "generator": "ifss.data.synthetic", **requested, "num_classes": NUM_CLASSES,
        "objects_per_image": [1, MAX_OBJECTS], "void_label": VOID,
        "confusable_pairs": [list(pair) for pair in CONFUSABLE_PAIRS],
        "class_image_counts": {split: dict(zip(CLASS_NAMES, split_counts))
                               for split, split_counts in counts.items()},
    })


def _concurrent_run_finished(out: Path, requested: dict) -> bool:
    """True if another process wrote the same dataset to ``out`` while this one was working (our
    rename then fails because ``out`` is no longer empty); that is success, not an error."""
    try:
        return _existing_matches(out, requested)
    except IfssError:
        return False
