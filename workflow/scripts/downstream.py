from pathlib import Path

from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc.downstream import run_downstream

log = rule_logger(snakemake.log[0])
table = run_downstream(
    snakemake.input.raw,
    snakemake.input.denoised,
    snakemake.input.clean,
    snakemake.input.index,
    snakemake.input.manifest,
    Path(snakemake.output.table).parent,
    crop_size=snakemake.params.crop_size,
)
log.info("downstream segmentation of %d images x sources written to %s", len(table), snakemake.output.table)
