rule predict:
    """Denoise a plate's channel with overlapping tiles: a dask graph over blocks of whole images; first a
    seeded sample of its images is compared with the model's training data (training_check.json)."""
    input:
        raw=f"{RESULTS}/{{experiment}}/{{plate}}/raw/{{channel}}.zarr",
        weights=lambda w: f"{model_dir(w.experiment, group_of_plate(w.experiment, w.plate), w.channel)}/model.pt",
        model_json=lambda w: f"{model_dir(w.experiment, group_of_plate(w.experiment, w.plate), w.channel)}/model.json",
    output:
        zarr=directory(f"{RESULTS}/{{experiment}}/{{plate}}/denoised/{{channel}}.zarr"),
        training_check=f"{RESULTS}/{{experiment}}/{{plate}}/denoised/{{channel}}.training_check.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/predict/{{plate}}/{{channel}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/predict/{{plate}}/{{channel}}.tsv"
    conda:
        "../../envs/n2v.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=grows_with_attempt(16000),
        runtime=grows_with_attempt(240),
    params:
        predict=lambda w: settings_for(w, "predict"),
    script:
        "../scripts/predict.py"


rule predict_control:
    """With qc.control_model: the control model denoises QC's seeded sample of the plate channel (qc.control_images)."""
    input:
        raw=f"{RESULTS}/{{experiment}}/{{plate}}/raw/{{channel}}.zarr",
        weights=lambda w: f"{model_dir(w.experiment, group_of_plate(w.experiment, w.plate), w.channel)}/control/model.pt",
        model_json=lambda w: f"{model_dir(w.experiment, group_of_plate(w.experiment, w.plate), w.channel)}/control/model.json",
        control_json=lambda w: f"{model_dir(w.experiment, group_of_plate(w.experiment, w.plate), w.channel)}/control/control.json",
    output:
        zarr=directory(f"{RESULTS}/{{experiment}}/{{plate}}/qc/{{channel}}/control.zarr"),
    log:
        f"{RESULTS}/{{experiment}}/logs/predict_control/{{plate}}/{{channel}}.log",
    conda:
        "../../envs/n2v.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=grows_with_attempt(16000),
        runtime=grows_with_attempt(60),
    params:
        predict=lambda w: settings_for(w, "predict"),
        qc=lambda w: settings_for(w, "qc"),
    script:
        "../scripts/predict_control.py"
