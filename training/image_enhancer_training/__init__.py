"""Training for Image Enhancer: data, degradations, PSNR and GAN stages, export into the manifest."""

from .run import TrainingResult, run_training, train_main

__all__ = ["TrainingResult", "run_training", "train_main"]
