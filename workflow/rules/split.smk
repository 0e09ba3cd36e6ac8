rule planning_problem:
    """Fails with a problem found while planning one plate (see planning_problem_file): that plate's
    jobs wait on it and do not run; the other plates' jobs run on (all of them with -k). A shell
    command: Snakemake runs it from the process that recorded the problem (a run: block would be
    planned again in a fresh process, which never saw it)."""
    output:
        f"{RESULTS}/{{experiment}}/{{plate}}/planning_problems/{{step}}.txt",
    log:
        f"{RESULTS}/{{experiment}}/logs/planning_problem/{{plate}}/{{step}}.log",
    conda:
        "../../envs/io.yaml"
    params:
        problem=lambda w: _PLANNING_PROBLEMS.get(
            (w.experiment, w.plate, w.step),
            f"experiment {w.experiment}, plate {w.plate}: planning step {w.step} failed",
        ),
    shell:
        "echo PlanningProblem: {params.problem:q} > {log:q}; cat {log:q} >&2; exit 1"


checkpoint plate_index:
    """The plate's image index: one row per site with its source file(s) per channel."""
    input:
        unpack(plate_index_inputs),
    output:
        index=f"{RESULTS}/{{experiment}}/{{plate}}/index.csv",
    log:
        f"{RESULTS}/{{experiment}}/logs/plate_index/{{plate}}.log",
    conda:
        "../../envs/io.yaml"
    resources:
        mem_mb=grows_with_attempt(2000),
        runtime=grows_with_attempt(15),
    params:
        plate=plate_cfg,
        channels=lambda w: experiment_cfg(w.experiment)["channels"],
        ingest=lambda w: experiment_settings(config, w.experiment, "ingest"),
        table=table_identity,
        files=plate_listing,
    script:
        "../scripts/plate_index.py"


rule split_raw:
    """One channel of a plate into a Zarr array (images x Y x X); only this channel's files are read."""
    input:
        index=f"{RESULTS}/{{experiment}}/{{plate}}/index.csv",
        sources=channel_source_files,
    output:
        zarr=directory(f"{RESULTS}/{{experiment}}/{{plate}}/raw/{{channel}}.zarr"),
        rejects=f"{RESULTS}/{{experiment}}/{{plate}}/rejects/{{channel}}.csv",
    log:
        log=f"{RESULTS}/{{experiment}}/logs/split_raw/{{plate}}/{{channel}}.log",
        # A failed split's rejects table: Snakemake deletes a failed job's outputs, but not its logs.
        failed_rejects=f"{RESULTS}/{{experiment}}/logs/split_raw/{{plate}}/{{channel}}.rejects.csv",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/split_raw/{{plate}}/{{channel}}.tsv"
    conda:
        "../../envs/io.yaml"
    threads: 2
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(120),
    params:
        plate=plate_cfg,
        channel_order=lambda w: experiment_cfg(w.experiment).get("channel_order"),
        ingest=lambda w: settings_for(w, "ingest"),
        ground_truth=False,
        remote_sources=channel_remote_sources,
    script:
        "../scripts/split.py"


rule split_ground_truth:
    """The clean reference of one channel, laid out like the raw array (demo and benchmark plates)."""
    input:
        unpack(ground_truth_inputs),
    output:
        zarr=directory(f"{RESULTS}/{{experiment}}/{{plate}}/clean/{{channel}}.zarr"),
        rejects=f"{RESULTS}/{{experiment}}/{{plate}}/rejects/clean_{{channel}}.csv",
    log:
        log=f"{RESULTS}/{{experiment}}/logs/split_ground_truth/{{plate}}/{{channel}}.log",
        failed_rejects=f"{RESULTS}/{{experiment}}/logs/split_ground_truth/{{plate}}/{{channel}}.rejects.csv",
    benchmark:
        f"{RESULTS}/{{experiment}}/benchmarks/split_ground_truth/{{plate}}/{{channel}}.tsv"
    conda:
        "../../envs/io.yaml"
    threads: 2
    resources:
        mem_mb=grows_with_attempt(8000),
        runtime=grows_with_attempt(120),
    params:
        plate=plate_cfg,
        channel_order=lambda w: experiment_cfg(w.experiment).get("channel_order"),
        ingest=lambda w: settings_for(w, "ingest"),
        ground_truth=True,
        table=lambda w: table_identity(w, "ground_truth"),
    script:
        "../scripts/split.py"
