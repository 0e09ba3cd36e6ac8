from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc import run_plate_noise_models

log = rule_logger(snakemake.log[0])
raws = {channel: path for channel, path in snakemake.input.items()}
site = run_plate_noise_models(raws, snakemake.output[0], snakemake.params.qc)
log.info("plate noise models of %s written to %s; %s", ", ".join(raws), snakemake.output[0], " ".join(site.notes))
