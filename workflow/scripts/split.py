import pandas as pd

from jump_n2v.ingest import discover_plate, split_channel
from jump_n2v.logs import rule_logger

log = rule_logger(snakemake.log[0])
w, params = snakemake.wildcards, snakemake.params
if params.ground_truth:
    index = discover_plate(w.plate, params.plate, [w.channel], ground_truth=True)
else:
    index = pd.read_csv(snakemake.input.index)
split_channel(
    index,
    w.channel,
    experiment=w.experiment,
    plate=w.plate,
    plate_cfg=params.plate,
    channel_order=params.channel_order,
    ingest=params.ingest,
    out_zarr=snakemake.output.zarr,
    rejects_csv=snakemake.output.rejects,
    threads=snakemake.threads,
    log=log,
)
