"""SimFormer (Chen et al., NeurIPS 2022, "Weak-shot Semantic Segmentation via Dual Similarity
Transfer"), written from the formulas of research/wilson_sdr_gfss_simformer.md §D and §G, one
module per part of the method: `matching` (Hungarian matching of proposals to base targets with
masks and novel targets with image labels only), `mask_losses` (classification, focal and dice
mask losses, the complementary loss, deep supervision), `similarity` (SimNet, its balanced BCE,
the pixel-pixel similarity distillation) and `pairs` (the training pairs). The model is
ifss.models.maskformer (model.arch=maskformer), the method ifss.methods.simformer, the pseudo
labels of the retraining stage `pseudo_labels`."""
