"""Report pages: what a model sees, as self-contained HTML that opens from the file system.

- Run reports (train.py, eval.py): `write_unit_data` once a unit is evaluated (its curves,
  histogram, galleries, defect types: `<results dir>/report_units/<unit>.json`), then
  `write_run_report` rebuilds `report.html` beside last.csv from last.csv and every unit's data,
  under the folder's lock; `write_summary_report` writes the page beside eval.py's
  results_avg_std.json (mean ± std over run ids).
- Prediction reports (predict.py): `write_thumbnail` for each overlay, then
  `write_prediction_report` builds `report.html` in the output folder.

This package reads common/ only (never engine/): the engine hands it plain values and its
prediction arrays. See docs/reports.md."""

from deploy.report.prediction_page import THUMBNAIL_FOLDER, thumbnail_path, write_prediction_report
from deploy.report.run_page import write_run_report
from deploy.report.summary_page import write_summary_report
from deploy.report.thumbnails import write_thumbnail
from deploy.report.unit_data import UnitDescription, describe_unit, unit_data_path, write_unit_data

__all__ = [
    "THUMBNAIL_FOLDER", "UnitDescription", "describe_unit", "thumbnail_path", "unit_data_path",
    "write_prediction_report", "write_run_report", "write_summary_report", "write_thumbnail", "write_unit_data",
]
