from pathlib import Path

from jump_n2v.export.loaddata import write_loaddata_csv
from jump_n2v.plumbing.logs import rule_logger

log = rule_logger(snakemake.log[0])
channels = [Path(folder).name for folder in snakemake.input.tiffs]
layouts = set(snakemake.params.layouts.values())
if len(layouts) != 1:
    raise ValueError(f"export_layout differs between channels {snakemake.params.layouts}; one LoadData CSV needs one layout")
table = write_loaddata_csv(
    snakemake.input.index,
    dict(zip(channels, snakemake.input.zarrs)),
    dict(zip(channels, snakemake.input.tiffs)),
    layouts.pop(),
    snakemake.output.load_data,
    source_table=snakemake.params.source_table,
    storage=snakemake.params.storage,
    log=log,
)
log.info("LoadData CSV with %d rows and %d columns (channels %s replaced) written to %s",
         len(table), len(table.columns), channels, snakemake.output.load_data)
