from pathlib import Path

from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc import read_site_noise_models, run_channel_qc

log = rule_logger(snakemake.log[0])
# The channel's model from the plate's fit, whose pixel mixing is the camera's (one per plate).
noise_model = read_site_noise_models(snakemake.input.noise_models).models[snakemake.wildcards.channel]
table = run_channel_qc(
    snakemake.input.raw,
    snakemake.input.denoised,
    Path(snakemake.output.metrics).parent,
    clean=snakemake.input.get("clean"),
    index=snakemake.input.index,
    qc_settings=snakemake.params.qc,
    noise_model=noise_model,
)
log.info("QC of %d images written to %s", len(table), Path(snakemake.output.metrics).parent)
