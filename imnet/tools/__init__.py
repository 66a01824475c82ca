"""Tools around a run: the demo dataset, ImageNet's val layout, plots, exports and predictions."""
