"""Training: matcher, losses, biased branch and debias objective, trainer."""
