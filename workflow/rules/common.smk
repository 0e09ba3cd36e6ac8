import hashlib
import os
import sys
from pathlib import Path

# The jump_n2v package holds the logic; make it importable here and in every job (local or SLURM).
PACKAGE_SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, PACKAGE_SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (PACKAGE_SRC, os.getenv("PYTHONPATH")) if p))

# Parsing imports only the light modules (config, storage: jsonschema, yaml, the standard library).
# jump_n2v.ingest (numpy, tifffile, zarr) is imported by the functions below that need it, when
# the DAG is planned, so --lint, --list-rules and each cluster job's own parse do without it.
from jump_n2v.config import channel_settings, demo_settings, experiment_settings, validate_config
from jump_n2v.plumbing.storage import is_remote, map_path, object_fingerprint, storage_settings

validate_config(config)

RESULTS = config["results"]
ALL_PLATES_GROUP = "all-plates"


wildcard_constraints:
    experiment=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    plate=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    group=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    channel=r"[A-Za-z0-9][A-Za-z0-9_-]*",
    step=r"[A-Za-z0-9][A-Za-z0-9_-]*",


def grows_with_attempt(base):
    """A resource request that grows with each retry (base, 2x base, ...), so a job killed for
    memory or time asks for more; a profile's set-resources replaces it with a fixed value."""
    return lambda wildcards, attempt: base * attempt


# Cheap bookkeeping runs on the submit host, not as cluster jobs.
localrules:
    all,
    plate_index,
    export_load_data,
    planning_problem,


def experiment_cfg(experiment):
    return config["experiments"][experiment]


def plate_cfg(wildcards):
    return experiment_cfg(wildcards.experiment)["plates"][wildcards.plate]


def settings_for(wildcards, section):
    """One resolved settings section for the job's (experiment, channel)."""
    return settings_for_channel(wildcards.experiment, wildcards.channel, section)


def settings_for_channel(experiment, channel, section):
    """One resolved settings section of a channel of the experiment."""
    return channel_settings(config, experiment, channel)[section]


def train_groups(experiment):
    """Model groups: one per plate, or one shared by all plates of the experiment."""
    exp = experiment_cfg(experiment)
    return list(exp["plates"]) if exp["train_on"] == "plate" else [ALL_PLATES_GROUP]


def group_of_plate(experiment, plate):
    return plate if experiment_cfg(experiment)["train_on"] == "plate" else ALL_PLATES_GROUP


def plates_of_group(experiment, group):
    return list(experiment_cfg(experiment)["plates"]) if group == ALL_PLATES_GROUP else [group]


def has_ground_truth(experiment, plate):
    return "ground_truth" in experiment_cfg(experiment)["plates"][plate]


def plate_table(plate, key="load_data"):
    """The plate's LoadData table (raw or ground truth) after its path_map."""
    return map_path(plate[key], plate.get("path_map"))


# A problem found while planning one plate (its table missing or in a missing bucket, its images
# smaller than the patches, two sources exported to one file) must stop that plate's jobs only:
# raised in an input or params function it would stop every plate of the run, even with -k. So it
# becomes an input of the plate's jobs, made by the planning_problem job, which fails with it.
_PLANNING_PROBLEMS = {}


def planning_problem_file(wildcards, step, problem):
    """The file the planning_problem job fails to make, with ``problem`` recorded as its message."""
    _PLANNING_PROBLEMS[(wildcards.experiment, wildcards.plate, step)] = (
        f"experiment {wildcards.experiment}, plate {wildcards.plate}: {problem}"
    )
    return f"{RESULTS}/{wildcards.experiment}/{wildcards.plate}/planning_problems/{step}.txt"


_TABLE_STATES = {}


def table_state(wildcards, key="load_data"):
    """(what identifies the plate's LoadData table, problem or None) for a loaddata plate; ("", None)
    otherwise. A local table is identified by a digest of its content, so a table edited in place
    (mtime kept, as cp -p and rsync -a do) reruns the index; an s3:// table by its ETag/size/mtime
    (one listing). Computed once per table per Snakemake run."""
    plate = plate_cfg(wildcards)
    if plate["format"] != "loaddata" or key not in plate:
        return "", None
    table = plate_table(plate, key)
    if table not in _TABLE_STATES:
        if is_remote(table):
            try:
                _TABLE_STATES[table] = object_fingerprint(table, storage_settings(plate)), None
            except OSError as error:  # StorageError
                _TABLE_STATES[table] = "", f"LoadData table {table} cannot be read: {getattr(error, 'problem', error)}"
        else:
            try:
                with open(table, "rb") as handle:
                    _TABLE_STATES[table] = hashlib.file_digest(handle, "sha256").hexdigest(), None
            except OSError as error:
                _TABLE_STATES[table] = "", f"LoadData table {table} cannot be read: {error.strerror or error}"
    return _TABLE_STATES[table]


def table_inputs(wildcards, key="load_data"):
    """A local table as an input; a table that cannot be read as the plate's planning problem."""
    plate = plate_cfg(wildcards)
    _, problem = table_state(wildcards, key)
    if problem is not None:
        return {"planning_problem": planning_problem_file(wildcards, key, problem)}
    if plate["format"] == "loaddata" and key in plate and not is_remote(plate_table(plate, key)):
        return {"load_data": plate_table(plate, key)}
    return {}


def plate_index_inputs(wildcards):
    """What the plate's index is built from: a local LoadData table, or the demo generator's manifest."""
    plate = plate_cfg(wildcards)
    inputs = table_inputs(wildcards)
    if demo_settings(plate) is not None:
        inputs["demo"] = f"{RESULTS}/{wildcards.experiment}/{wildcards.plate}/demo_manifest.json"
    return inputs


def table_identity(wildcards, key="load_data"):
    """The params entry that reruns a job when its LoadData table's content changes (see table_state)."""
    return table_state(wildcards, key)[0]


def plate_listing(wildcards):
    """Digest of a hyperstack or Phenix plate's file names, computed at planning time (a glob): a site
    file added or removed changes this param, which reruns the index (and what follows from it).
    Demo plates are left out: their files appear during the run, and their manifest is an input."""
    from jump_n2v.ingest import listing_digest

    plate = plate_cfg(wildcards)
    return None if demo_settings(plate) is not None else listing_digest(wildcards.plate, plate)


def channel_source_files(wildcards):
    """The existing local source files of one channel, read from the plate index (a checkpoint).

    Missing files are left to the split, which names them (on_bad_image: fail) or lists them in
    the rejects table (skip), rather than Snakemake refusing to start the job. What can be judged
    from the index alone (images smaller than the training patches, s3 folders that cannot be
    listed, two sources of a flat export with one file name) becomes the plate's planning problem,
    before any split or training.
    """
    from jump_n2v.export.tiff import exported_paths
    from jump_n2v.ingest import DiscoveryError, channel_sources, check_patch_fits, read_index

    e, p, c = wildcards.experiment, wildcards.plate, wildcards.channel
    index_csv = checkpoints.plate_index.get(experiment=e, plate=p).output.index
    index = read_index(index_csv)
    sources = channel_sources(index, c, existing_only=True)
    try:
        check_patch_fits(sources, settings_for(wildcards, "n2v")["patch_size"], f"channel {c}")
        if settings_for(wildcards, "export")["export_tiff"]:
            exported_paths(index, c, export_dir(e, p, c), settings_for(wildcards, "export")["export_layout"])
        remote_channel_fingerprints(wildcards)
    except (DiscoveryError, ValueError, OSError) as error:
        return [planning_problem_file(wildcards, f"split_raw-{c}", error)]
    return sources


_REMOTE_FINGERPRINTS = {}


def remote_channel_fingerprints(wildcards):
    """``channel -> digest`` of the plate's s3 sources (see channel_remote_sources), listed once per
    plate per Snakemake run. A folder that cannot be listed is left to the split, which names each
    object; an OSError here (the storage itself unusable) is the plate's planning problem."""
    from jump_n2v.ingest import read_index, remote_source_fingerprints

    index_csv = checkpoints.plate_index.get(experiment=wildcards.experiment, plate=wildcards.plate).output.index
    key = (wildcards.experiment, wildcards.plate, os.stat(index_csv).st_mtime_ns)
    if key not in _REMOTE_FINGERPRINTS:
        _REMOTE_FINGERPRINTS[key] = remote_source_fingerprints(
            read_index(index_csv), storage_settings(plate_cfg(wildcards))
        )
    return _REMOTE_FINGERPRINTS[key]


def channel_remote_sources(wildcards):
    """Digest of the channel's s3 sources (ETag, size, mtime); "" for a plate on local disk.

    s3 objects cannot be Snakemake inputs, so the split job carries this as a param instead: a
    changed object changes its channel's digest, and Snakemake reruns that channel only. The
    whole plate is listed once per Snakemake run (one LIST per folder), not once per channel.
    A listing that fails is the plate's planning problem (channel_source_files), so "" here.
    """
    try:
        return remote_channel_fingerprints(wildcards).get(wildcards.channel, "")
    except OSError:
        return ""


def ground_truth_inputs(wildcards):
    plate = plate_cfg(wildcards)
    inputs = {
        "index": f"{RESULTS}/{wildcards.experiment}/{wildcards.plate}/index.csv",
        **table_inputs(wildcards, "ground_truth"),
    }
    if demo_settings(plate) is not None:
        inputs["demo"] = f"{RESULTS}/{wildcards.experiment}/{wildcards.plate}/demo_manifest.json"
    return inputs


def model_dir(experiment, group, channel):
    return f"{RESULTS}/{experiment}/models/{group}/{channel}"


def qc_inputs(wildcards):
    e, p, c = wildcards.experiment, wildcards.plate, wildcards.channel
    model = model_dir(e, group_of_plate(e, p), c)
    inputs = {
        "index": f"{RESULTS}/{e}/{p}/index.csv",
        "raw": f"{RESULTS}/{e}/{p}/raw/{c}.zarr",
        "denoised": f"{RESULTS}/{e}/{p}/denoised/{c}.zarr",
        "model_json": f"{model}/model.json",
        "noise_models": f"{RESULTS}/{e}/{p}/qc/noise_models.json",
    }
    if has_ground_truth(e, p):
        inputs["clean"] = f"{RESULTS}/{e}/{p}/clean/{c}.zarr"
    return inputs


def plate_noise_model_inputs(wildcards):
    """Every channel's raw array of the plate: the camera's pixel mixing is measured across them."""
    e, p = wildcards.experiment, wildcards.plate
    return {channel: f"{RESULTS}/{e}/{p}/raw/{channel}.zarr" for channel in experiment_cfg(e)["channels"]}


def has_nucleus_labels(experiment, plate):
    """Whether the downstream segmentation scores the plate: a demo plate (its renderer writes the true nucleus
    labels) of an experiment that has its nuclei channel (nuclei_channel)."""
    exp = experiment_cfg(experiment)
    return demo_settings(exp["plates"][plate]) is not None and exp["nuclei_channel"] in exp["channels"]


def nuclei_channel_settings(experiment, section):
    """One resolved settings section of the experiment's nuclei channel (nuclei_channel)."""
    return settings_for_channel(experiment, experiment_cfg(experiment)["nuclei_channel"], section)


def downstream_inputs(wildcards):
    e, p = wildcards.experiment, wildcards.plate
    c = experiment_cfg(e)["nuclei_channel"]
    return {
        "index": f"{RESULTS}/{e}/{p}/index.csv",
        "manifest": f"{RESULTS}/{e}/{p}/demo_manifest.json",
        "raw": f"{RESULTS}/{e}/{p}/raw/{c}.zarr",
        "denoised": f"{RESULTS}/{e}/{p}/denoised/{c}.zarr",
        "clean": f"{RESULTS}/{e}/{p}/clean/{c}.zarr",
    }


def report_inputs(wildcards):
    e = wildcards.experiment
    exp = experiment_cfg(e)
    channels, plates = exp["channels"], list(exp["plates"])
    qc = f"{RESULTS}/{e}/{{plate}}/qc/{{channel}}"
    models = [model_dir(e, g, c) for g in train_groups(e) for c in channels]
    return {
        "metrics": expand(f"{qc}/metrics.csv", plate=plates, channel=channels),
        "panels": expand(f"{qc}/panels.png", plate=plates, channel=channels),
        "plate_maps": expand(f"{qc}/plate_map.png", plate=plates, channel=channels),
        "model_json": [f"{m}/model.json" for m in models],
        "training_curves": [f"{m}/training_curve.png" for m in models],
        "rejects": expand(f"{RESULTS}/{e}/{{plate}}/rejects/{{channel}}.csv", plate=plates, channel=channels),
        # the predict step's comparison of each plate channel with its model's training data
        "training_checks": expand(
            f"{RESULTS}/{e}/{{plate}}/denoised/{{channel}}.training_check.json", plate=plates, channel=channels
        ),
        # their clipping.csv: pixels the TIFF export clipped into the source dtype
        "exports": [export_dir(e, p, c) for p in plates for c in exported_channels(e)],
        # the downstream segmentation of plates with true nucleus labels
        "downstream": [f"{RESULTS}/{e}/{p}/qc/downstream.csv" for p in plates if has_nucleus_labels(e, p)],
        # qc.control_model: the main vs control model disagreement, read beside each metrics.csv
        "disagreements": [
            f"{RESULTS}/{e}/{p}/qc/{c}/disagreement.{kind}"
            for p in plates
            for c in control_channels(e)
            for kind in ("csv", "png")
        ],
    }


def control_channels(experiment):
    """Channels that get a control model and the disagreement check (qc.control_model)."""
    return [
        c for c in experiment_cfg(experiment)["channels"] if settings_for_channel(experiment, c, "qc")["control_model"]
    ]


def export_dir(experiment, plate, channel):
    return f"{RESULTS}/{experiment}/{plate}/denoised_tiff/{channel}"


def exported_channels(experiment):
    """Channels whose denoised images are also exported as TIFFs (export.export_tiff)."""
    return [
        c
        for c in experiment_cfg(experiment)["channels"]
        if channel_settings(config, experiment, c)["export"]["export_tiff"]
    ]


def export_load_data_inputs(wildcards):
    e, p = wildcards.experiment, wildcards.plate
    channels = exported_channels(e)
    inputs = {
        "index": f"{RESULTS}/{e}/{p}/index.csv",
        "zarrs": [f"{RESULTS}/{e}/{p}/denoised/{c}.zarr" for c in channels],
        "tiffs": [export_dir(e, p, c) for c in channels],
    }
    # an s3 table is followed by the table param instead
    return {**inputs, **table_inputs(wildcards)}


def export_source_table(wildcards):
    """The LoadData table the exported table is made from (after path_map), or None for other formats."""
    plate = plate_cfg(wildcards)
    return plate_table(plate) if plate["format"] == "loaddata" else None


def ome_zarr_channels(experiment):
    """Channels that go into the plate's OME-Zarr HCS export (export.export_ome_zarr)."""
    return [
        c
        for c in experiment_cfg(experiment)["channels"]
        if channel_settings(config, experiment, c)["export"]["export_ome_zarr"]
    ]


def all_targets():
    targets = []
    for experiment, exp in config["experiments"].items():
        targets.append(f"{RESULTS}/{experiment}/report/report.html")
        if exported_channels(experiment):
            targets += [f"{RESULTS}/{experiment}/{plate}/denoised_tiff/load_data.csv" for plate in exp["plates"]]
        if ome_zarr_channels(experiment):
            targets += [f"{RESULTS}/{experiment}/{plate}/denoised_plate.ome.zarr" for plate in exp["plates"]]
    return targets
