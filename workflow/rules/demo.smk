rule demo_plate:
    """Synthetic Cell Painting plate with its clean ground truth (plates with a `demo` block)."""
    output:
        manifest=f"{RESULTS}/{{experiment}}/{{plate}}/demo_manifest.json",
    log:
        f"{RESULTS}/{{experiment}}/logs/demo_plate/{{plate}}.log",
    conda:
        "../../envs/io.yaml"
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(15),
    params:
        pattern=lambda w: plate_cfg(w)["pattern"],
        ground_truth=lambda w: plate_cfg(w)["ground_truth"],
        demo=lambda w: demo_settings(plate_cfg(w)),
        # What the generator writes: a results folder made before a kind existed (the true nucleus
        # labels the downstream check reads) regenerates its plate instead of failing downstream.
        writes="raw, clean, nuclei_labels",
    script:
        "../scripts/demo_plate.py"
