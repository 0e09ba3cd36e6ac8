from pathlib import Path

import torch

from jump_n2v.locks import model_folder_lock
from jump_n2v.logs import rule_logger
from jump_n2v.n2v import N2VSettings, train_channel

log = rule_logger(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
model_dir = Path(snakemake.output.weights).parent
with model_folder_lock(model_dir):  # a second run writing the same model fails at once, naming this one
    train_channel(snakemake.input.arrays, N2VSettings.from_dict(snakemake.params.n2v), model_dir, log=log)
