from pathlib import Path

from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc import run_channel_qc

log = rule_logger(snakemake.log[0])
table = run_channel_qc(
    snakemake.input.raw,
    snakemake.input.denoised,
    Path(snakemake.output.metrics).parent,
    clean=snakemake.input.get("clean"),
    index=snakemake.input.index,
    qc_settings=snakemake.params.qc,
)
log.info("QC of %d images written to %s", len(table), Path(snakemake.output.metrics).parent)
