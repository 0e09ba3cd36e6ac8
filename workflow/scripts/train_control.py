from pathlib import Path

import torch

from jump_n2v.plumbing.locks import model_folder_lock
from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.n2v import N2VSettings
from jump_n2v.n2v.control import train_control

torch.set_num_threads(snakemake.threads)
control_dir = Path(snakemake.output.weights).parent
with model_folder_lock(control_dir, log=snakemake.log[0]):
    log = rule_logger(snakemake.log[0])
    settings = N2VSettings.from_dict(snakemake.params.n2v)
    train_control(snakemake.input.arrays, settings, snakemake.input.model_json, control_dir, log=log)
