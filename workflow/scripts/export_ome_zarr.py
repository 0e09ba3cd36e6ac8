from jump_n2v.export.ome_zarr import write_hcs_plate
from jump_n2v.plumbing.locks import output_lock
from jump_n2v.plumbing.logs import rule_logger

with output_lock(snakemake.output.plate, log=snakemake.log[0]):  # one run at a time writes this store
    log = rule_logger(snakemake.log[0])
    write_hcs_plate(
        snakemake.input.index,
        dict(zip(snakemake.params.channels, snakemake.input.zarrs)),
        snakemake.output.plate,
        plate_name=snakemake.wildcards.plate,
        log=log,
    )
