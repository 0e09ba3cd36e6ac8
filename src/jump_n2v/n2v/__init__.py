"""Noise2Void training: the U-Net, blind-spot masking, lazy patch sampling and the training loop."""

from jump_n2v.n2v.masking import StructMask, mask_batch, masked_mse, stratification_cell_size
from jump_n2v.n2v.model import UNet, build_unet
from jump_n2v.n2v.sampling import Normalization, PatchSampler, array_location
from jump_n2v.n2v.trained import TrainedModel, load_trained
from jump_n2v.n2v.training import N2VSettings, train_channel

__all__ = [
    "N2VSettings",
    "Normalization",
    "PatchSampler",
    "StructMask",
    "TrainedModel",
    "UNet",
    "array_location",
    "build_unet",
    "load_trained",
    "mask_batch",
    "masked_mse",
    "stratification_cell_size",
    "train_channel",
]
