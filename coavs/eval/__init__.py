"""Evaluation: the community's AVS metrics (``metrics``) and bias metrics (``bias``)."""
