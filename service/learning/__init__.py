"""Beside the hot path: the fine-tuner's thread fits and refits models; the model store."""
