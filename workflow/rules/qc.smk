rule plate_noise_models:
    """The noise models of a plate's channels with one pixel mixing, the camera's: measured on the background of the channels where noise dominates, then every channel refitted with it (a confluent stain's texture must not read as correlated noise). QC of each channel uses its model from here."""
    input:
        unpack(plate_noise_model_inputs),
    output:
        f"{RESULTS}/{{experiment}}/{{plate}}/qc/noise_models.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/plate_noise_models/{{plate}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/plate_noise_models/{{plate}}.tsv"
    conda:
        "../../envs/qc.yaml"
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(60),
    params:
        # Only what the fit reads, so a channel's other QC settings rerun that channel's QC alone.
        qc=lambda w: {
            channel: {
                key: settings_for_channel(w.experiment, channel, "qc")[key] for key in ("noise_model_images", "seed")
            }
            for channel in experiment_cfg(w.experiment)["channels"]
        },
    script:
        "../scripts/plate_noise_models.py"


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


rule downstream:
    """Nuclei segmented on the nuclei channel's raw, denoised and clean images, scored against the true nuclei (plates with true nucleus labels: demo plates)."""
    input:
        unpack(downstream_inputs),
    output:
        table=f"{RESULTS}/{{experiment}}/{{plate}}/qc/downstream.csv",
        objects=f"{RESULTS}/{{experiment}}/{{plate}}/qc/downstream_objects.csv",
        figure=report(
            f"{RESULTS}/{{experiment}}/{{plate}}/qc/downstream.png",
            caption="../report/downstream.rst",
            category="{experiment}",
            subcategory="{plate}",
            labels={"channel": "nuclei", "figure": "downstream segmentation"},
        ),
    log:
        f"{RESULTS}/{{experiment}}/logs/downstream/{{plate}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/downstream/{{plate}}.tsv"
    conda:
        "../../envs/qc.yaml"
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(30),
    params:
        crop_size=lambda w: nuclei_channel_settings(w.experiment, "qc")["crop_size"],
    script:
        "../scripts/downstream.py"


rule qc_disagreement:
    """With qc.control_model: how far the main and the control model's outputs disagree, in noise sigmas."""
    input:
        denoised=f"{RESULTS}/{{experiment}}/{{plate}}/denoised/{{channel}}.zarr",
        control=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/control.zarr",
        noise_model=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/noise_model.json",
        index=f"{RESULTS}/{{experiment}}/{{plate}}/index.csv",
    output:
        table=f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/disagreement.csv",
        figure=report(
            f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/disagreement.png",
            caption="../report/disagreement.rst",
            category="{experiment}",
            subcategory="{plate}",
            labels={"channel": "{channel}", "figure": "main | control | disagreement"},
        ),
    log:
        f"{RESULTS}/{{experiment}}/logs/qc_disagreement/{{plate}}/{{channel}}.log",
    conda:
        "../../envs/qc.yaml"
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(30),
    script:
        "../scripts/qc_disagreement.py"
