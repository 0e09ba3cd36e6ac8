from pathlib import Path

import torch

from jump_n2v.logs import rule_logger
from jump_n2v.n2v import N2VSettings, train_channel

log = rule_logger(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
train_channel(
    snakemake.input.arrays,
    N2VSettings.from_dict(snakemake.params.n2v),
    Path(snakemake.output.weights).parent,
    log=log,
)
