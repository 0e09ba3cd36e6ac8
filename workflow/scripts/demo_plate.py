from jump_n2v.demo import DemoSpec, write_demo_manifest, write_demo_plate
from jump_n2v.plumbing.logs import rule_logger

log = rule_logger(snakemake.log[0])
demo = snakemake.params.demo
spec = DemoSpec(wells=tuple(demo["wells"]), sites=demo["sites"], size=demo["size"],
                cells_per_site=demo["cells_per_site"], seed=demo["seed"], hazards=demo["hazards"])
manifest = write_demo_plate(snakemake.params.pattern, snakemake.params.ground_truth, spec,
                            plate=snakemake.wildcards.plate)
write_demo_manifest(manifest, snakemake.output.manifest)
log.info("wrote %d demo sites of plate %s", len(manifest["files"]), snakemake.wildcards.plate)
