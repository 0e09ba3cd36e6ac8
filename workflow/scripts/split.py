from jump_n2v.ingest import ground_truth_index, read_index, split_channel
from jump_n2v.logs import rule_logger

log = rule_logger(snakemake.log[0])
w, params = snakemake.wildcards, snakemake.params
index = read_index(snakemake.input.index)
if params.ground_truth:
    index = ground_truth_index(index, w.plate, params.plate, [w.channel], ingest=params.ingest)
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
