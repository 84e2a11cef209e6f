"""Pixels in, pixels out: the only place that touches image math (see ``enhancer.Enhancer``)."""
