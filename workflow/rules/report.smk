rule report:
    """One self-contained HTML report per experiment, with the summary tables beside it."""
    input:
        unpack(report_inputs),
    output:
        summary=report(
            f"{RESULTS}/{{experiment}}/report/summary.csv",
            caption="../report/summary.rst",
            category="{experiment}",
            subcategory="Summary",
            labels={"table": "plate x channel summary"},
        ),
        summary_parquet=f"{RESULTS}/{{experiment}}/report/summary.parquet",
        html=report(
            f"{RESULTS}/{{experiment}}/report/report.html",
            caption="../report/report.rst",
            category="{experiment}",
            subcategory="Summary",
            labels={"table": "experiment report"},
        ),
    log:
        f"{RESULTS}/{{experiment}}/logs/report.log",
    conda:
        "../../envs/qc.yaml"
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(30),
    params:
        model_dirs=lambda w: [
            [plate, channel, model_dir(w.experiment, group_of_plate(w.experiment, plate), channel)]
            for plate in experiment_cfg(w.experiment)["plates"]
            for channel in experiment_cfg(w.experiment)["channels"]
        ],
        export_dirs=lambda w: [
            [plate, channel, export_dir(w.experiment, plate, channel)]
            for plate in experiment_cfg(w.experiment)["plates"]
            for channel in exported_channels(w.experiment)
        ],
        settings=lambda w: {
            channel: channel_settings(config, w.experiment, channel)
            for channel in experiment_cfg(w.experiment)["channels"]
        },
    script:
        "../scripts/report.py"
