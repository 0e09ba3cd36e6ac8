from jump_n2v.export_ome import write_hcs_plate
from jump_n2v.logs import rule_logger

log = rule_logger(snakemake.log[0])
write_hcs_plate(
    snakemake.input.index,
    dict(zip(snakemake.params.channels, snakemake.input.zarrs)),
    snakemake.output.plate,
    plate_name=snakemake.wildcards.plate,
    log=log,
)
