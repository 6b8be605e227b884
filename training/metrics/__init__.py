"""Evaluation metrics of generated talking-face videos (see training/evaluate.py)."""
