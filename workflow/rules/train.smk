rule train:
    """One N2V model per (plate or experiment, channel); resumes from checkpoint.pt after an interruption."""
    input:
        arrays=lambda w: expand(
            f"{RESULTS}/{w.experiment}/{{plate}}/raw/{w.channel}.zarr",
            plate=plates_of_group(w.experiment, w.group),
        ),
    output:
        weights=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.pt",
        model_json=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.json",
        training_log=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/training_log.csv",
        curve=report(
            f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/training_curve.png",
            caption="../report/training_curve.rst",
            category="{experiment}",
            subcategory="Training",
            labels={"model": "{group}", "channel": "{channel}", "figure": "loss curves"},
        ),
    log:
        f"{RESULTS}/{{experiment}}/logs/train/{{group}}/{{channel}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/train/{{group}}/{{channel}}.tsv"
    conda:
        "../../envs/n2v.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=grows_with_attempt(32000),
        runtime=grows_with_attempt(720),
    params:
        n2v=lambda w: settings_for(w, "n2v"),
    script:
        "../scripts/train.py"


rule train_control:
    """With qc.control_model: a second model per (group, channel), the same n2v settings with seed + 1000, on
    images the main model did not use (control.json records whether there were enough to be disjoint)."""
    input:
        arrays=lambda w: expand(
            f"{RESULTS}/{w.experiment}/{{plate}}/raw/{w.channel}.zarr",
            plate=plates_of_group(w.experiment, w.group),
        ),
        model_json=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.json",
    output:
        weights=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/control/model.pt",
        model_json=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/control/model.json",
        control_json=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/control/control.json",
        training_log=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/control/training_log.csv",
        curve=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/control/training_curve.png",
    log:
        f"{RESULTS}/{{experiment}}/logs/train_control/{{group}}/{{channel}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/train_control/{{group}}/{{channel}}.tsv"
    conda:
        "../../envs/n2v.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=grows_with_attempt(32000),
        runtime=grows_with_attempt(720),
    params:
        n2v=lambda w: settings_for(w, "n2v"),
    script:
        "../scripts/train_control.py"
