from pathlib import Path

from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc import run_disagreement_qc

log = rule_logger(snakemake.log[0])
table = run_disagreement_qc(
    snakemake.input.denoised, snakemake.input.control, snakemake.input.noise_model,
    Path(snakemake.output.table).parent, index=snakemake.input.index,
)
log.info("disagreement of %d image(s) with the control model written to %s", len(table), snakemake.output.table)
