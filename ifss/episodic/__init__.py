"""Episodic (generalized) few-shot segmentation on frozen features: per-episode 1x1 heads
trained on the support images, many episodes at once (heads), the episodes themselves
(episodes), their scores (scores) and the evaluation loop (evaluate)."""
