rule export_tiff:
    """Denoised TIFFs of one channel, named after the source files, in the source dtype by default (for
    CellProfiler and viewers), with clipping.csv counting the clipped pixels per image."""
    input:
        zarr=f"{RESULTS}/{{experiment}}/{{plate}}/denoised/{{channel}}.zarr",
        index=f"{RESULTS}/{{experiment}}/{{plate}}/index.csv",
    output:
        tiffs=directory(f"{RESULTS}/{{experiment}}/{{plate}}/denoised_tiff/{{channel}}"),
    log:
        f"{RESULTS}/{{experiment}}/logs/export_tiff/{{plate}}/{{channel}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/export_tiff/{{plate}}/{{channel}}.tsv"
    conda:
        "../../envs/io.yaml"
    threads: 2
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(120),
    params:
        layout=lambda w: settings_for(w, "export")["export_layout"],
        export_dtype=lambda w: settings_for(w, "export")["export_dtype"],
    script:
        "../scripts/export_tiff.py"


rule export_load_data:
    """A LoadData CSV pointing at a plate's exported denoised TIFFs, so CellProfiler runs on them unchanged:
    for a LoadData plate its own table with only the exported channels' file columns replaced."""
    input:
        unpack(export_load_data_inputs),
    output:
        load_data=f"{RESULTS}/{{experiment}}/{{plate}}/denoised_tiff/load_data.csv",
    log:
        f"{RESULTS}/{{experiment}}/logs/export_load_data/{{plate}}.log",
    conda:
        "../../envs/io.yaml"
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(15),
    params:
        layouts=lambda w: {
            c: channel_settings(config, w.experiment, c)["export"]["export_layout"]
            for c in exported_channels(w.experiment)
        },
        source_table=export_source_table,
        storage=lambda w: plate_cfg(w).get("storage"),
        table=table_identity,
    script:
        "../scripts/export_load_data.py"


rule export_ome_zarr:
    """The plate's denoised channels as one OME-Zarr HCS plate (wells, fields, channels together; for napari, Fiji, QuPath)."""
    input:
        index=f"{RESULTS}/{{experiment}}/{{plate}}/index.csv",
        zarrs=lambda w: [
            f"{RESULTS}/{w.experiment}/{w.plate}/denoised/{c}.zarr" for c in ome_zarr_channels(w.experiment)
        ],
    output:
        plate=directory(f"{RESULTS}/{{experiment}}/{{plate}}/denoised_plate.ome.zarr"),
    log:
        f"{RESULTS}/{{experiment}}/logs/export_ome_zarr/{{plate}}.log",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/export_ome_zarr/{{plate}}.tsv"
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),  # one field of every channel at a time
        runtime=grows_with_attempt(120),
    params:
        channels=lambda w: ome_zarr_channels(w.experiment),
    script:
        "../scripts/export_ome_zarr.py"


rule export_bmz:
    """A model as a BioImage Model Zoo package (Fiji/deepImageJ, ilastik, napari), tested with bioimageio.core.

    Not part of the default targets: ask for it, e.g.
    snakemake results/demo/models/DemoPlate/DNA/model.bmz.zip
    """
    input:
        weights=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.pt",
        model_json=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.json",
        training_log=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/training_log.csv",
        # The test tensors come from one of the model's validation images.
        arrays=lambda w: expand(
            f"{RESULTS}/{w.experiment}/{{plate}}/raw/{w.channel}.zarr",
            plate=plates_of_group(w.experiment, w.group),
        ),
    output:
        package=f"{RESULTS}/{{experiment}}/models/{{group}}/{{channel}}/model.bmz.zip",
    log:
        f"{RESULTS}/{{experiment}}/logs/export_bmz/{{group}}/{{channel}}.log",
    conda:
        "../../envs/bmz.yaml"
    threads: 1
    resources:
        mem_mb=grows_with_attempt(4000),
        runtime=grows_with_attempt(30),
    script:
        "../scripts/export_bmz.py"
