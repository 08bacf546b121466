"""lit_gp: gradient penalties for PyTorch Lightning."""
