"""Pretrained target networks for teacher distillation (docs/method.md §3.5, §3.6)."""
