from pathlib import Path

import torch

from jump_n2v.plumbing.locks import output_lock
from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.n2v import load_trained
from jump_n2v.n2v.control import read_control
from jump_n2v.predict.control import predict_control
from jump_n2v.settings import QCSettings

torch.set_num_threads(snakemake.threads)
with output_lock(snakemake.output.zarr, log=snakemake.log[0]):
    log = rule_logger(snakemake.log[0])
    qc = QCSettings.from_dict(snakemake.params.qc)
    record = read_control(Path(snakemake.input.control_json).parent)
    predict_control(
        load_trained(snakemake.input.model_json), snakemake.input.raw, snakemake.output.zarr, snakemake.params.predict,
        images=qc.control_images, seed=qc.seed, log=log,
        attrs={"control_model": snakemake.input.model_json, "control_disjoint": record["disjoint"], "control_note": record["note"]},
    )
