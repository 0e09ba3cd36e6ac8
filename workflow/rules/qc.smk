rule qc:
    """Per-image QC of one plate channel: the noise model fitted to the raw images, reference metrics when a clean image exists, no-reference and noise-model ones always."""
    input:
        unpack(qc_inputs),
    output:
        metrics=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/metrics.csv",
        metrics_parquet=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/metrics.parquet",
        noise_model=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/noise_model.json",
        panels=report(
            f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/panels.png",
            caption="../report/panels.rst",
            category="{experiment}",
            subcategory="{plate}",
            labels={"channel": "{channel}", "figure": "raw | denoised | residual"},
        ),
        plate_map=report(
            f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/plate_map.png",
            caption="../report/plate_map.rst",
            category="{experiment}",
            subcategory="{plate}",
            labels={"channel": "{channel}", "figure": "plate map"},
        ),
    log:
        f"{RESULTS}/{{experiment}}/logs/qc/{{plate}}/{{channel}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/qc/{{plate}}/{{channel}}.tsv"
    conda:
        "../../envs/qc.yaml"
    threads: 2
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(60),
    params:
        qc=lambda w: settings_for(w, "qc"),
    script:
        "../scripts/qc.py"
