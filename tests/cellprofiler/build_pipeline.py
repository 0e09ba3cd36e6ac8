"""Write the CellProfiler pipeline the CellProfiler test runs: LoadData -> MeasureImageIntensity -> ExportToSpreadsheet.

Run with the CellProfiler venv's Python (`make cellprofiler-env`):
    .venv-cellprofiler/bin/python tests/cellprofiler/build_pipeline.py pipe.cppipe OrigDNA OrigRNA OrigBrightfield IllumDNA
The LoadData table is given at run time (`cellprofiler ... --data-file load_data.csv`).
"""

import sys

from cellprofiler_core.pipeline import Pipeline
from cellprofiler_core.preferences import set_headless

set_headless()

from cellprofiler.modules.exporttospreadsheet import ExportToSpreadsheet  # noqa: E402
from cellprofiler_core.modules.loaddata import LoadData  # noqa: E402
from cellprofiler.modules.measureimageintensity import MeasureImageIntensity  # noqa: E402

destination, *images = sys.argv[1:]
pipeline = Pipeline()
load = LoadData()
load.set_module_num(1)
pipeline.add_module(load)
measure = MeasureImageIntensity()
measure.set_module_num(2)
measure.images_list.value = ", ".join(images)
pipeline.add_module(measure)
export = ExportToSpreadsheet()
export.set_module_num(3)
export.wants_prefix.value = False  # Image.csv, not MyExpt_Image.csv
export.wants_overwrite_without_warning.value = True
pipeline.add_module(export)
with open(destination, "w") as handle:
    pipeline.dump(handle)
