# jump-n2v: Noise2Void denoising of Cell Painting plates.
# Stages live in workflow/rules/*.smk; all logic lives in the jump_n2v package (src/).
from snakemake.utils import min_version

min_version("9.0")


# The demo config is the default; a --configfile on the command line replaces it rather than
# being merged into it (so a user's experiments run without the demo's).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
