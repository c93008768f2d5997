"""Every method's hyper-parameters (its preset) as a dataclass, with the domain of each value.

Plain data, importable without torch: the workflow checks a config's `params` (and every
variant's) against these when it builds the DAG, so a typo or a value out of range fails at once,
not when the job starts. A run writes the resolved params into its config.yaml; nothing here is
applied silently. The method classes (ifss/methods/*.py) take these as their `Params`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ifss.errors import IfssError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise IfssError(message)


def _one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
    _check(value in valid, f"params.{name}={value!r} is not known; valid values: {', '.join(valid)}")


@dataclass
class NoParams:
    """A method without hyper-parameters of its own."""


@dataclass
class AMPParams:
    amp_alpha: float = 0.25  # weight of the old weight when an older class is re-imprinted

    def __post_init__(self):
        _check(0 <= self.amp_alpha <= 1, f"params.amp_alpha={self.amp_alpha} must be in [0, 1]")


@dataclass
class DWIParams:
    dyn_iter: int = 1000  # cool-down iterations (step 0)
    dyn_lr: float = 1.0  # SGD learning rate of the cool-down (no momentum)
    episodes: int = 2  # episodes per iteration; their losses are summed
    shots: list[int] = field(default_factory=lambda: [1, 2, 5])  # K is drawn from these
    random_images: int = 4  # query images drawn from the whole training set
    class_images: int = 4  # query images drawn from the images of the episode's class

    def __post_init__(self):
        _check(self.dyn_iter >= 0 and self.dyn_lr > 0 and self.episodes >= 1,
               "params.dyn_iter must be >= 0, params.dyn_lr > 0 and params.episodes >= 1")
        _check(bool(self.shots) and min(self.shots) >= 1,
               f"params.shots={self.shots} must be a list of positive counts")
        _check(self.random_images >= 0 and self.class_images >= 0
               and self.random_images + self.class_images > 0,
               "params.random_images + params.class_images must be positive")


@dataclass
class RTParams:
    reinit_classifier: bool = False  # step 0 only: fresh classifier instead of FT's
    update_bn: bool = False  # True: BN in train mode as in the original (stats move)


@dataclass
class SPNParams:
    vectors: str = ""  # .npy of class vectors, row = original class id ('' = dataset default)


@dataclass
class LwFParams:
    loss_kd: float = 10.0  # weight of the KD term (PIFS code: 10; MiB's LwF: 100)
    kd_temperature: float = 1.0  # T of the KD softmaxes (PIFS `--kd_alpha`)

    def __post_init__(self):
        _check(self.kd_temperature > 0,
               f"params.kd_temperature must be > 0, got {self.kd_temperature}")


ILT_FEATURES = ("head", "body")


@dataclass
class ILTParams(LwFParams):
    loss_de: float = 10.0  # weight of the feature-distillation term (PIFS: 10; MiB's ILT: 100)
    feature: str = "head"  # head (PIFS: the DeepLab head output) | body (MiB: the ResNet output)

    def __post_init__(self):
        super().__post_init__()
        _one_of("feature", self.feature, ILT_FEATURES)


@dataclass
class MiBParams:
    loss_kd: float = 10.0  # weight of UNKD (PIFS `--mib_kd 10`; MiB: 10, 100 only for 15-1)
    init_classifier: bool = True  # MiB's background-based init of the new classifier


@dataclass
class PIFSParams:
    loss_kd: float = 10.0  # weight of the distillation term
    kd_temperature: float = 1.0  # the originals' kd_alpha
    kd_clip: float = 10.0  # drop the weighted KD of a batch above this (0 = never)
    batch_renorm: bool = True  # batch renormalisation with frozen statistics (the "iabr" norm)

    def __post_init__(self):
        _check(self.loss_kd >= 0 and self.kd_temperature > 0 and self.kd_clip >= 0,
               "params.loss_kd and params.kd_clip must be >= 0 and params.kd_temperature > 0")


MCLOS_MEMORIES = ("none", "pixel", "pixel+region")
MCLOS_ANCHOR_SAMPLING = ("hard", "random")
MCLOS_EXAMPLE_SAMPLING = ("hard", "semi-hard", "random")


@dataclass
class MCLOSParams(PIFSParams):
    memory: str = "pixel+region"  # none (mini-batch contrast) | pixel | pixel+region
    anchor_sampling: str = "hard"  # hard (segmentation-aware) | random
    example_sampling: str = "semi-hard"  # hard | semi-hard | random
    contrast_weight: float = 0.1
    temperature: float = 0.1
    base_temperature: float = 0.07
    warmup: float = 0.2  # fraction of the step's iterations without the contrastive term
    memory_size: int = 5000  # entries per class and bank
    memory_candidates: int = 0  # > 0: contrast with that many random entries per class and bank
    pixels_per_class_step0: int = 10  # pixel entries per image and class per iteration, step 0
    pixels_per_class: int = 50  # the same at steps >= 1 (the reference's pixel_update_freq)
    anchors_per_class: int = 50  # per image and class
    max_anchors: int = 1024  # per batch (per process)
    anchor_min_pixels: int = 1  # feature-map pixels a class needs in an image to give anchors
    num_pos: int = 1024
    num_neg: int = 2048
    semi_hard_ratio: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        _one_of("memory", self.memory, MCLOS_MEMORIES)
        _one_of("anchor_sampling", self.anchor_sampling, MCLOS_ANCHOR_SAMPLING)
        _one_of("example_sampling", self.example_sampling, MCLOS_EXAMPLE_SAMPLING)
        positive = ("memory_size", "pixels_per_class_step0", "pixels_per_class",
                    "anchors_per_class", "max_anchors", "num_pos", "num_neg")
        bad = [f"{k} >= 1" for k in positive if getattr(self, k) < 1]
        rules = (("temperature > 0", self.temperature > 0),
                 ("base_temperature > 0", self.base_temperature > 0),
                 ("contrast_weight >= 0", self.contrast_weight >= 0),
                 ("warmup in [0, 1]", 0 <= self.warmup <= 1),
                 ("semi_hard_ratio in (0, 1]", 0 < self.semi_hard_ratio <= 1),
                 ("memory_candidates >= 0", self.memory_candidates >= 0))
        bad += [rule for rule, ok in rules if not ok]
        _check(not bad, f"MCLOS params out of range: need {', '.join(f'params.{b}' for b in bad)}")


@dataclass
class LwFMCParams:
    loss_kd: float = 10.0  # weight of the BCE distillation (MiB/SDR `--icarl_importance 10`)

    def __post_init__(self):
        _check(self.loss_kd >= 0, f"params.loss_kd must be >= 0, got {self.loss_kd}")


@dataclass
class CILParams:
    loss_cil: float = 1.0  # weight of the entropy-weighted KD (SDR's preset never set it: 0)
    entropy_scale: float = 1.0  # gs of w = 1 + gs * H_bits(teacher) (SDR: the --loss_CIL value)

    def __post_init__(self):
        _check(self.loss_cil >= 0 and self.entropy_scale >= 0,
               "params.loss_cil and params.entropy_scale must be >= 0")


@dataclass
class SDRParams:
    # The original's `--method SDR` preset (argparser.py). Its README suggests starting from
    # loss_kd 10, loss_de_prototypes 1e-2, loss_fc = lfc_sep_clust 1e-3, loss_featspars 1e-4
    # (searched: KD 1..100, PM 1e-3..1e-1, CL 1e-3..1e-2, FS 1e-5..1e-3).
    loss_kd: float = 100.0  # weight of UNKD (steps >= 1)
    loss_de_prototypes: float = 0.01  # prototype matching of the old classes (steps >= 1)
    loss_de_prototypes_sumafter: bool = True  # batch class mean vs prototype (False: per pixel)
    loss_fc: float = 1e-3  # attraction of each class's features to its prototype (steps >= 1)
    lfc_sep_clust: float = 1e-3  # repulsion between the batch's class means (steps >= 1)
    loss_featspars: float = 1e-3  # feature sparsity (every step, step 0 included)
    init_classifier: bool = True  # MiB's background-based init of the new classifier

    def __post_init__(self):
        weights = ("loss_kd", "loss_de_prototypes", "loss_fc", "lfc_sep_clust", "loss_featspars")
        bad = [f"params.{w} >= 0" for w in weights if not getattr(self, w) >= 0]
        _check(not bad, f"SDR params out of range: need {', '.join(bad)}")


@dataclass
class RegularizationParams:
    # EWC / PI / RW (ifss/methods/regularization.py): SDR's `--method EWC|PI|RW` presets
    # (argparser.py: reg_importance 1000 for all three); the MiB paper used EWC 500, PI 500, RW 100.
    importance: float = 1000.0  # λ of the penalty λ Σ W (θ - θ_old)² (`--reg_importance`)
    normalize: bool = True  # min-max normalise each importance tensor (SDR: no --reg_no_normalize)

    def __post_init__(self):
        _check(self.importance >= 0, f"params.importance must be >= 0, got {self.importance}")


@dataclass
class EWCParams(RegularizationParams):
    alpha: float = 0.9  # running Fisher F <- alpha g² + (1 - alpha) F (`--reg_alpha`)

    def __post_init__(self):
        super().__post_init__()
        _check(0 < self.alpha <= 1, f"params.alpha={self.alpha} must be in (0, 1]")


@dataclass
class PIParams(RegularizationParams):
    # ξ of Ω = ω / ((θ_end - θ_start)² + ξ): 1e-20 is the MiB/SDR code's (a local EPS in PI.get:
    # no damping in effect); Zenke et al.'s synaptic intelligence damps with e.g. ξ = 1e-3.
    damping: float = 1e-20

    def __post_init__(self):
        super().__post_init__()
        _check(self.damping > 0, f"params.damping must be > 0, got {self.damping}")


@dataclass
class RWParams(EWCParams):
    reg_iterations: int = 10  # iterations per window of the path score (`--reg_iterations`)

    def __post_init__(self):
        super().__post_init__()
        _check(self.reg_iterations >= 1,
               f"params.reg_iterations must be >= 1, got {self.reg_iterations}")


WILSON_PRIORS = ("loc", "none", "fixed", "ce")


@dataclass
class WILSONParams:
    # WILSON's run.sh / argparser (research/wilson_sdr_gfss_simformer.md §A.5); the segmentation
    # loss and ℓ_SSS start after train.warmup_iterations (the original's pseudo_ep epochs, where
    # its `warmup` lr policy ends its plateau), before that only the localizer learns.
    alpha: float = 0.5  # soft labels q = α·onehot(argmax m) + (1 - α)·m (COCO-to-VOC: 0.9)
    localizer_lr: float = 0.01  # the localizer's own learning rate (`--lr_pseudo`), absolute
    localizer_channels: int = 256  # width of the localizer's two 3x3 convs
    prior: str = "loc"  # loc (ℓ_LOC, BCE to σ(old)) | none | fixed (old logits replace the
    # localizer's old classes) | ce (CE to the old model's argmax): WILSON Table 4
    relaxed: bool = False  # image labels of the old classes too (WILSON Table 5)
    focal_gamma: float = 3.0  # γ of the focal penalty
    focal_lambda: float = 0.01  # λ of the focal penalty's log
    loss_cls: float = 1.0  # ℓ_CLS
    loss_loc: float = 1.0  # ℓ_LOC (prior loc / ce)
    loss_seg: float = 1.0  # ℓ_SEG (`--l_seg`)
    loss_enc: float = 1.0  # ℓ_ENC, MSE of the body features to the old model's (`--loss_de`)
    loss_sss: float = 1.0  # ℓ_SSS on the PAMR pseudo mask
    pamr: bool = True  # refine the localizer masks with PAMR for ℓ_SSS (`--affinity`)
    pamr_iterations: int = 10
    pamr_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12])

    def __post_init__(self):
        _one_of("prior", self.prior, WILSON_PRIORS)
        weights = ("loss_cls", "loss_loc", "loss_seg", "loss_enc", "loss_sss", "focal_gamma")
        bad = [f"params.{w} >= 0" for w in weights if not getattr(self, w) >= 0]
        rules = (("params.alpha in [0, 1]", 0 <= self.alpha <= 1),
                 ("params.localizer_lr > 0", self.localizer_lr > 0),
                 ("params.localizer_channels >= 1", self.localizer_channels >= 1),
                 ("params.focal_lambda > 0", self.focal_lambda > 0),
                 ("params.pamr_iterations >= 1", self.pamr_iterations >= 1),
                 ("params.pamr_dilations: positive integers",
                  bool(self.pamr_dilations) and all(isinstance(d, int) and d >= 1
                                                    for d in self.pamr_dilations)))
        bad += [rule for rule, ok in rules if not ok]
        _check(not bad, f"WILSON params out of range: need {', '.join(bad)}")


@dataclass
class PretrainParams:
    # The GFSS capstone's pre-training of PSPNet on the base classes (seed 003 §3.3 Eq. 1-3 and
    # §4.2; research/wilson_sdr_gfss_simformer.md §C.2): label-smoothed CE, optionally plus
    # contrast_weight x the supervised pixel-to-pixel contrast of ifss/pixel_contrast.py.
    label_smoothing: float = 0.1  # ε of the CE (§4.2)
    contrast_weight: float = 0.0  # λ of Eq. 3 (0: CE only, no projection head is built)
    temperature: float = 0.1  # T of the contrast
    base_temperature: float = 0.07  # the loss is scaled by T / T_base
    max_samples: int = 1024  # anchors per batch (per process)
    max_views: int = 100  # anchors per (image, class); a class needs more pixels than this
    projection_dim: int = 256  # output channels of the projection head
    projection_lr_mult: float = 1.0  # lr multiplier of the projection head (the original: 2.0)
    background_anchors: bool = False  # the report: no background anchors (G:src/contrast.py: True)

    def __post_init__(self):
        rules = (("label_smoothing in [0, 1)", 0 <= self.label_smoothing < 1),
                 ("contrast_weight >= 0", self.contrast_weight >= 0),
                 ("temperature > 0", self.temperature > 0),
                 ("base_temperature > 0", self.base_temperature > 0),
                 ("max_samples >= 1", self.max_samples >= 1),
                 ("max_views >= 1", self.max_views >= 1),
                 ("projection_dim >= 1", self.projection_dim >= 1),
                 ("projection_lr_mult >= 0", self.projection_lr_mult >= 0),
                 ("background_anchors: true or false", isinstance(self.background_anchors, bool)))
        bad = [rule for rule, ok in rules if not ok]
        _check(not bad, f"pre-training params out of range: need "
                        f"{', '.join(f'params.{b}' for b in bad)}")


@dataclass
class PretrainContrastParams(PretrainParams):
    contrast_weight: float = 0.1  # PSP-CTR: λ 0.1 (GB:config_files/pascal_pretrain.yaml)


SIMFORMER_DISTILL = ("ce", "cce")


@dataclass
class SimFormerParams:
    # SimFormer's _1Prop_Cfgs (research/wilson_sdr_gfss_simformer.md §D.1-D.2): COCO-Stuff-10K
    # values; ADE20K: comp_weight 0.2, distill_weight 0.5. The three stages are presets of these:
    # seg (crosim false), seg + similarity transfer (crosim true), retraining on pseudo labels
    # (retrain true, comp_weight 0, data.train_labels set).
    cls_weight: float = 1.0  # CE of the queries' classes (AssignCls); also the matcher's class cost
    focal_weight: float = 20.0  # sigmoid focal mask loss (AssignMaskMASK) and matcher cost
    dice_weight: float = 1.0  # dice mask loss (AssignMaskDICE) and matcher cost
    no_object_weight: float = 0.1  # CE weight of the "no object" class
    comp_weight: float = 0.15  # the complementary loss (CompSupNovel); 0 = base-only training
    deep_supervision: bool = True  # the same losses on every decoder layer's output
    crosim: bool = False  # pixel-pixel similarity transfer: SimNet + distillation, pair batches
    sim_base_weight: float = 1.0  # SimNet's balanced BCE on base pixel pairs (BASE_LOSS)
    distill_weight: float = 0.1  # the distillation into the novel region (DISTILL_LOSS)
    distill: str = "cce"  # ce | cce (DISTILL_FUNC)
    sim_points: int = 100  # points per image, for SimNet and for the distillation
    sim_common_fraction: float = 0.8  # SimNet points from one base class common to both images
    sim_window: int = 25  # batches of the balanced BCE's running counts
    pair_rare_prob: float = 0.01  # pair on the rarest shareable novel class (Deconf0.01)
    retrain: bool = False  # novel classes have masks (pseudo labels): matched and supervised as
    # base ones (NOVEL_HAS_MASK); needs data.train_labels

    def __post_init__(self):
        _one_of("distill", self.distill, SIMFORMER_DISTILL)
        weights = ("cls_weight", "focal_weight", "dice_weight", "no_object_weight", "comp_weight",
                   "sim_base_weight", "distill_weight")
        bad = [f"params.{w} >= 0" for w in weights if not getattr(self, w) >= 0]
        # two points at least: SimNet's BatchNorm needs more than one pair
        rules = (("params.sim_points >= 2", self.sim_points >= 2),
                 ("params.sim_common_fraction in [0, 1]", 0 <= self.sim_common_fraction <= 1),
                 ("params.sim_window >= 1", self.sim_window >= 1),
                 ("params.pair_rare_prob in [0, 1]", 0 <= self.pair_rare_prob <= 1))
        bad += [rule for rule, ok in rules if not ok]
        _check(not bad, f"SimFormer params out of range: need {', '.join(bad)}")
