from jump_n2v.ingest import ground_truth_index, read_index, split_channel
from jump_n2v.plumbing.locks import output_lock
from jump_n2v.plumbing.logs import rule_logger

w, params = snakemake.wildcards, snakemake.params
# A second run splitting this channel into the same results folder fails at once, naming this one.
with output_lock(snakemake.output.zarr, log=snakemake.log.log):
    log = rule_logger(snakemake.log.log)
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
        failed_rejects_csv=snakemake.log.failed_rejects,
        threads=snakemake.threads,
        log=log,
    )
