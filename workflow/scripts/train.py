from pathlib import Path

import torch

from jump_n2v.plumbing.locks import model_folder_lock
from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.n2v import N2VSettings, train_channel

torch.set_num_threads(snakemake.threads)
model_dir = Path(snakemake.output.weights).parent
# A second run writing the same model fails at once, naming this one, and leaves this one's log alone.
with model_folder_lock(model_dir, log=snakemake.log[0]):
    log = rule_logger(snakemake.log[0])
    train_channel(snakemake.input.arrays, N2VSettings.from_dict(snakemake.params.n2v), model_dir, log=log)
