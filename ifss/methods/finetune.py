"""FT and COS: fine-tuning of every parameter with cross-entropy, on a linear (FT) or cosine (COS)
classifier. The classifier kind comes from the registry; the behaviour is the base default."""
from __future__ import annotations

from ifss.methods.base import Method


class FineTuning(Method):
    pass
