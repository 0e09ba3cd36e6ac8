from jump_n2v.ingest import discover_plate, write_index
from jump_n2v.plumbing.logs import rule_logger

log = rule_logger(snakemake.log[0])
table = discover_plate(snakemake.wildcards.plate, snakemake.params.plate, snakemake.params.channels,
                       ingest=snakemake.params.ingest)
write_index(table, snakemake.output.index)
log.info("plate %s: %d images in %d wells", snakemake.wildcards.plate, len(table), table["well"].nunique())
