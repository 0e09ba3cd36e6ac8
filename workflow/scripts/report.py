from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.qc.report import write_experiment_report

log = rule_logger(snakemake.log[0])
summary = write_experiment_report(
    snakemake.wildcards.experiment,
    snakemake.input.metrics,
    {(plate, channel): directory for plate, channel, directory in snakemake.params.model_dirs},
    snakemake.params.settings,
    snakemake.input.rejects,
    snakemake.output.summary,
    snakemake.output.summary_parquet,
    snakemake.output.html,
    export_dirs={(plate, channel): folder for plate, channel, folder in snakemake.params.export_dirs},
    training_checks=snakemake.input.training_checks,
    downstream=snakemake.input.downstream,
)
log.info("report of %d plate x channel rows written to %s", len(summary), snakemake.output.html)
