import torch

from jump_n2v.export.bmz import export_bmz
from jump_n2v.plumbing.logs import rule_logger

log = rule_logger(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
result = export_bmz(snakemake.input.model_json, snakemake.output.package, name=f"jump-n2v {snakemake.wildcards.experiment} {snakemake.wildcards.group} {snakemake.wildcards.channel}", log=log)
for line in result["details"]:
    log.info("bioimageio test_model %s", line)
