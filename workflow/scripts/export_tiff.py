from jump_n2v.plumbing.atomic import atomic_output
from jump_n2v.export.tiff import export_tiffs
from jump_n2v.plumbing.locks import output_lock
from jump_n2v.plumbing.logs import rule_logger

with output_lock(snakemake.output.tiffs, log=snakemake.log[0]):  # one run at a time writes this folder
    log = rule_logger(snakemake.log[0])
    with atomic_output(snakemake.output.tiffs) as folder:
        folder.mkdir()
        written = export_tiffs(snakemake.input.zarr, snakemake.input.index, folder, layout=snakemake.params.layout,
                               export_dtype=snakemake.params.export_dtype, log=log)
    log.info("exported %d TIFFs to %s", len(written), snakemake.output.tiffs)
