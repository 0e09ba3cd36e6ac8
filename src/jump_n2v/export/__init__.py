"""Exports of denoised plates and trained models, for other tools.

Per-image TIFFs (:mod:`.tiff`) with a CellProfiler LoadData CSV (:mod:`.loaddata`) and an OME-Zarr HCS
plate (:mod:`.ome_zarr`), all reading the denoised arrays through :mod:`.channels`; and a BioImage Model
Zoo package of a trained model (:mod:`.bmz`).
"""
