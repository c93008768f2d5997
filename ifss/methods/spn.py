"""SPN (SPNet, Xian et al. 2019): a fixed semantic-embedding classifier (research §2.1-2.2).

logits_c = <f, e_c> for every pixel, with f the unnormalised head output and e_c the fixed,
L2-normalised vector of class c; the classifier has no trainable parameters, so the head outputs
D channels (D = the vectors' dimension; 600 for fastText ⊕ word2vec). Step 0 and every few-shot
step train body and head with cross-entropy; a step only adds its classes' vectors.

Where the vectors come from (`params.vectors`, a .npy with one row per original class id; empty =
the dataset's default, `ifss.data.embeddings.default_vectors_path`): the synthetic dataset's
attribute vectors in `<data.root>/class_attributes.npy` (background, a zero row there, gets its
own indicator dimension: see `ifss.data.embeddings`), or for voc/coco the word vectors that
`ifss.data.embeddings.fetch_word_vectors` writes to `<data.root>/word_vectors_{voc,coco}.npy`.

The model is built with `model_options(cfg, state)`: the head's output width is the dimension of
the loaded checkpoint's vectors when there is one, else that of the vector file. `prepare` writes
this step's class vectors into the classifier's buffers, which are saved in model.pt, so the next
step and evaluation read the old classes' vectors from the checkpoint, not from the file.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ifss.config import RunConfig
from ifss.data.build import StepData
from ifss.data.embeddings import default_vectors_path, load_class_vectors
from ifss.errors import IfssError
from ifss.methods.base import Method
from ifss.methods.params import SPNParams

STATE_KEY = "classifier.convs.0.weight"  # step 0's (classes x D) vectors in a model state dict


def vectors_path(cfg: RunConfig) -> Path:
    path = (cfg.params or {}).get("vectors", "")
    return Path(path) if path else default_vectors_path(cfg.dataset, cfg.data.root)


class SemanticProjection(Method):
    Params = SPNParams

    @classmethod
    def model_options(cls, cfg: RunConfig, state: dict | None = None) -> dict:
        """build_model's extra arguments: the width of the class vectors."""
        if state is not None and STATE_KEY in state:
            return {"embedding_dim": int(state[STATE_KEY].shape[1])}
        return {"embedding_dim": int(load_class_vectors(vectors_path(cfg)).shape[1])}

    def prepare(self, model: nn.Module, old_model: nn.Module | None, data: StepData) -> None:
        super().prepare(model, old_model, data)
        path = vectors_path(self.cfg)
        vectors = load_class_vectors(path)
        ids = list(data.task.new_classes(self.step))  # original ids; step 0 starts with bkg 0
        if max(ids) >= len(vectors):
            raise IfssError(f"class vectors {path} have {len(vectors)} rows, but class id "
                            f"{max(ids)} is used; give the vectors of {self.cfg.dataset}")
        rows = torch.from_numpy(vectors[ids])
        if not bool(rows.any(dim=1).all()):
            zero = [c for c, r in zip(ids, rows) if not r.any()]
            raise IfssError(f"class vectors {path} have zero rows for class ids {zero}; "
                            "every class needs a vector")
        step = model.classifier.convs[self.step].weight
        if rows.shape[1] != step.shape[1]:
            raise IfssError(f"class vectors {path} have {rows.shape[1]} dimensions, but the "
                            f"model's classifier has {step.shape[1]} (from the previous step); "
                            "use the vectors the previous steps used")
        model.classifier.set_embeddings(self.step, rows)
