"""Tiled Noise2Void prediction of single images and of whole (images, Y, X) Zarr arrays.

settings (the ``predict`` configuration section) < tiling (receptive field, halo, tiles per axis) < runner
(a network copy denoising batches of tiles: ``denoise_image``) < arrays (whole Zarr arrays as one dask
computation: ``predict_array``); each imports only those before it.
"""
