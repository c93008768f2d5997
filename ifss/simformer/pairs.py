"""SimFormer's training pairs over image-level labels (research/wilson_sdr_gfss_simformer.md
§D.1, the `Deconf0.01` pairs): every image is trained next to a partner, so that the pixel
similarities SimNet teaches cross images.

For an image i with novel classes N_i, a partner j != i "deconfuses" class c when N_i ∩ N_j =
{c}: the two images share that novel class and no other, so a novel pixel of i similar to one of
j is likely c. Per image:

    1. the classes c of N_i with at least one such partner are its options;
    2. one uniform draw u: if u < rare_prob, c = the option held by the fewest images of the
       dataset (ties: the smallest class id); otherwise c = a uniform draw among the options;
       the partner is a uniform draw among the partners of c;
    3. without options, the partner is a uniform draw among the images sharing any base or
       novel class with i;
    4. without those, an error names the image.

Images are visited in the dict's order and candidates are taken in that order, so one numpy seed
gives one list. Class ids outside the base and novel sets are ignored. Unlike the original's
candidate lists, an image is never its own partner.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Mapping

import numpy as np

from ifss.errors import IfssError


def epoch_pairs(image_labels: Mapping[Hashable, Iterable[int]], base_classes: Iterable[int],
                novel_classes: Iterable[int], rng: np.random.Generator | int,
                rare_prob: float = 0.01) -> list[tuple[Hashable, Hashable]]:
    """The (image, partner) pairs of one epoch, one per image in `image_labels`' order.

    image_labels: image id -> the classes it holds (image-level labels); rng: a numpy Generator
    or a seed for one; rare_prob: the probability of pairing on the rarest shareable novel
    class rather than a random one."""
    base, novel = set(base_classes), set(novel_classes)
    if base & novel:
        raise IfssError(f"classes {sorted(base & novel)} are both base and novel; give each "
                        "class to one of the two sets")
    if not 0.0 <= rare_prob <= 1.0:
        raise IfssError(f"rare_prob must lie in [0, 1], got {rare_prob}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    ids = list(image_labels)
    novel_of = [frozenset(image_labels[i]) & novel for i in ids]
    known_of = [frozenset(image_labels[i]) & (base | novel) for i in ids]
    holders: dict[int, set[int]] = {}
    for index, classes in enumerate(known_of):
        for c in classes:
            holders.setdefault(c, set()).add(index)

    pairs = []
    for index in range(len(ids)):
        options = {}
        for c in sorted(novel_of[index]):
            candidates = holders[c] - {index}
            for other in novel_of[index] - {c}:
                candidates -= holders[other]
            if candidates:
                options[c] = sorted(candidates)
        if options:
            classes = sorted(options)
            if rng.random() < rare_prob:
                chosen = min(classes, key=lambda c: (len(holders[c]), c))
            else:
                chosen = classes[int(rng.integers(len(classes)))]
            partners = options[chosen]
        else:
            partners = sorted(set().union(*(holders[c] for c in known_of[index])) - {index})
            if not partners:
                raise IfssError(f"image {ids[index]!r} shares no base or novel class with any "
                                "other image, so SimFormer cannot pair it; check its image-level "
                                "labels or leave it out of the training list")
        pairs.append((ids[index], ids[partners[int(rng.integers(len(partners)))]]))
    return pairs
