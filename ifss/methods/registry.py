"""Which methods exist, which step-0 run each starts from, which classifier it uses.

Plain data, importable without torch, so the workflow can build its DAG from it quickly. The
method classes are imported only when a run asks for one.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ifss.errors import unknown
from ifss.methods import params as P


@dataclass(frozen=True)
class MethodInfo:
    name: str
    module: str  # module holding the class
    cls: str
    base: str  # the step-0 method whose run this method's step 1 starts from
    classifier: str  # linear | cosine
    step0: bool = False  # True: this method also trains a step-0 model (a base for others)
    step0_from: str | None = None  # a step-0 method whose step-0 run this one's step 0 starts from
    params: type = P.NoParams  # its hyper-parameters (ifss/methods/params.py), checked by the DAG
    # True: a weak-shot method (data.protocol weakshot): its step 1 trains from ImageNet weights,
    # there is no step-0 run, and it trains under no other protocol
    weakshot: bool = False
    # True: it trains a step-0 model only (a backbone others evaluate), there is no step 1
    step0_only: bool = False


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo("FT", "ifss.methods.finetune", "FineTuning", "FT", "linear", step0=True),
        MethodInfo("COS", "ifss.methods.finetune", "FineTuning", "COS", "cosine", step0=True),
        # the PIFS family (research/pifs_mclos_mib.md §2.2)
        MethodInfo("WI", "ifss.methods.imprinting", "WeightImprinting", "COS", "cosine"),
        MethodInfo("DWI", "ifss.methods.dwi", "DynamicWeightImprinting", "DWI", "cosine",
                   step0=True, step0_from="COS", params=P.DWIParams),
        MethodInfo("AMP", "ifss.methods.imprinting", "AdaptiveMaskedProxies", "FT", "linear",
                   params=P.AMPParams),
        MethodInfo("PIFS", "ifss.methods.pifs", "PIFS", "COS", "cosine", params=P.PIFSParams),
        MethodInfo("MCLOS", "ifss.methods.mclos", "MCLOS", "MCLOS", "cosine", step0=True,
                   params=P.MCLOSParams),
        MethodInfo("RT", "ifss.methods.retrain", "Retraining", "RT", "linear",
                   step0=True, step0_from="FT", params=P.RTParams),
        MethodInfo("SPN", "ifss.methods.spn", "SemanticProjection", "SPN", "embedding",
                   step0=True, params=P.SPNParams),
        MethodInfo("LWF", "ifss.methods.distillation", "LearningWithoutForgetting", "FT", "linear",
                   params=P.LwFParams),
        MethodInfo("ILT", "ifss.methods.distillation", "IncrementalLearningTechniques", "FT",
                   "linear", params=P.ILTParams),
        MethodInfo("MIB", "ifss.methods.mib", "ModelingTheBackground", "FT", "linear",
                   params=P.MiBParams),
        # output distillation of the continual suite (research/wilson_sdr_gfss_simformer.md §B.4)
        MethodInfo("LWF-MC", "ifss.methods.continual_kd", "MultiClassLearningWithoutForgetting",
                   "FT", "linear", params=P.LwFMCParams),
        MethodInfo("CIL", "ifss.methods.continual_kd", "EntropyWeightedDistillation", "FT",
                   "linear", params=P.CILParams),
        # SDR trains its own step 0 (CE + the prototype update), so step 1 has prototypes
        MethodInfo("SDR", "ifss.methods.sdr", "SDR", "SDR", "linear", step0=True,
                   params=P.SDRParams),
        # importance regularisers: each tracks its importance while its own step 0 trains
        MethodInfo("EWC", "ifss.methods.regularization", "ElasticWeightConsolidation", "EWC",
                   "linear", step0=True, params=P.EWCParams),
        MethodInfo("PI", "ifss.methods.regularization", "PathIntegral", "PI", "linear",
                   step0=True, params=P.PIParams),
        MethodInfo("RW", "ifss.methods.regularization", "RiemannianWalk", "RW", "linear",
                   step0=True, params=P.RWParams),
        # weakly incremental: step 0 with one-hot BCE, steps >= 1 from image labels (seed 001)
        MethodInfo("WILSON", "ifss.methods.wilson", "WILSON", "WILSON", "linear", step0=True,
                   params=P.WILSONParams),
        # GFSS pre-training of PSPNet on the base classes (seed 003 §3.3, §4.2): step 0 only;
        # two presets of one class, each its own step-0 run (a variant would share one)
        MethodInfo("PSP", "ifss.methods.pretraining", "Pretraining", "PSP", "linear", step0=True,
                   step0_only=True, params=P.PretrainParams),
        MethodInfo("PSP-CTR", "ifss.methods.pretraining", "Pretraining", "PSP-CTR", "linear",
                   step0=True, step0_only=True, params=P.PretrainContrastParams),
        # weak-shot segmentation with a mask-transformer (seed 002): base classes from pixel
        # labels, novel ones from image labels; seg, seg + similarity and retraining are presets
        MethodInfo("SimFormer", "ifss.methods.simformer", "SimFormer", "SimFormer", "linear",
                   params=P.SimFormerParams, weakshot=True),
    )
}


def method_info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name]


def weakshot_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.weakshot]


def base_methods() -> list[str]:
    return [m.name for m in METHODS.values() if m.step0]


def get_method_class(name: str):
    info = method_info(name)
    return getattr(importlib.import_module(info.module), info.cls)


def method_params(name: str, values: dict | None, where: str = "params"):
    """`values` checked against the method's Params (names, types, domains): the dataclass."""
    from ifss.config import from_dict

    return from_dict(method_info(name).params, values or {}, prefix=f"{where}.")
