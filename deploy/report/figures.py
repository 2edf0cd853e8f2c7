"""The plots of the report pages, drawn with matplotlib into PNG data: URIs: the image ROC and
precision-recall curves, the PRO curve up to its integration limit, and histograms of scores.

matplotlib is used through its object-oriented API on the Agg canvas (no pyplot: no global
figure list, nothing to close, no display needed) and imported only when a plot is drawn. The
curves come from common/metrics.py (the numbers the metrics integrate), thinned for drawing."""

import io
from typing import Sequence

import numpy as np

from deploy.report.page import data_uri

DPI = 100
NORMAL_COLOUR, DEFECT_COLOUR, THRESHOLD_COLOUR = "#2b6cb0", "#c0392b", "#111111"


def _figure(width: float = 3.3, height: float = 2.6):
    """A figure with one axes on the Agg canvas; fixed margins in inches (a layout engine would
    double the drawing time) leave room for the tick labels, axis labels and title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.55 / width, right=1 - 0.12 / width, bottom=0.45 / height, top=1 - 0.25 / height)
    axes = figure.subplots()
    axes.tick_params(labelsize=8)
    axes.grid(True, linewidth=0.4, alpha=0.5)
    return figure, axes


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    figure.clear()
    return data_uri(buffer.getvalue(), "image/png")


def thin_polyline(x: np.ndarray, y: np.ndarray, points: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """A monotone polyline with at most about `points` vertices, kept evenly along its length
    (|dx| + |dy|), first and last vertex always kept; short ones are returned unchanged."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size <= points:
        return x, y
    length = np.r_[0.0, np.cumsum(np.abs(np.diff(x)) + np.abs(np.diff(y)))]
    keep = np.unique(np.r_[0, np.searchsorted(length, np.linspace(0, length[-1], points)), x.size - 1])
    keep = keep[keep < x.size]
    return x[keep], y[keep]


def roc_plot(fpr: Sequence[float], tpr: Sequence[float], title: str) -> str:
    """ROC curve (false-positive rate vs true-positive rate) with the chance diagonal."""
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle=":")
    axes.plot(fpr, tpr, color=DEFECT_COLOUR, linewidth=1.6)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="true-positive rate")
    axes.set_title(title, fontsize=9)
    return _png(figure)


def precision_recall_plot(recall: Sequence[float], precision: Sequence[float], positive_share: float,
                          title: str) -> str:
    """Step-wise precision-recall curve (as AP integrates it) with the share of defective images."""
    figure, axes = _figure()
    axes.axhline(positive_share, color="#999999", linewidth=0.8, linestyle=":")
    axes.step(recall, precision, where="pre", color=DEFECT_COLOUR, linewidth=1.6)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    axes.set_title(title, fontsize=9)
    return _png(figure)


def pro_plot(fpr: Sequence[float], pro: Sequence[float], limit: float, title: str) -> str:
    """PRO curve up to just past the integration limit, the limit drawn as a vertical line and the
    integrated area shaded."""
    figure, axes = _figure()
    fpr, pro = np.asarray(fpr), np.asarray(pro)
    inside = fpr <= limit
    axes.fill_between(fpr[inside], pro[inside], color=DEFECT_COLOUR, alpha=0.12, linewidth=0)
    axes.plot(fpr, pro, color=DEFECT_COLOUR, linewidth=1.6)
    axes.axvline(limit, color=THRESHOLD_COLOUR, linewidth=1, linestyle="--")
    axes.annotate(f"limit {limit:g}", (limit, 0.04), xytext=(-4, 0), textcoords="offset points", ha="right",
                  fontsize=7)
    right = max(limit * 1.1, float(fpr.max()) if fpr.size else limit)
    axes.set(xlim=(0, min(right, limit * 1.2)), ylim=(0, 1.02), xlabel="false-positive rate (pixels)",
             ylabel="per-region overlap")
    axes.set_title(title, fontsize=9)
    return _png(figure)


def _bins(values: Sequence[float]) -> np.ndarray:
    """40 bins over the values' own range (and a little around it), so that narrow score
    distributions are not squeezed into one corner of 0..1."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return np.linspace(0.0, 1.0, 41)
    low, high = float(values.min()), float(values.max())
    margin = max(0.05 * (high - low), 1e-3)
    return np.linspace(low - margin, high + margin, 41)


def score_histogram(normal: Sequence[float], defective: Sequence[float], threshold: float | None, title: str,
                    threshold_label: str = "threshold") -> str:
    """Histograms of the normal and the defective images' scores on one axis, with the decision
    threshold as a vertical line when there is one."""
    figure, axes = _figure(3.6, 2.6)
    bins = _bins([*normal, *defective, *([] if threshold is None else [threshold])])
    if len(normal):
        axes.hist(normal, bins=bins, color=NORMAL_COLOUR, alpha=0.6, label=f"normal ({len(normal)})")
    if len(defective):
        axes.hist(defective, bins=bins, color=DEFECT_COLOUR, alpha=0.6, label=f"defective ({len(defective)})")
    if threshold is not None:
        axes.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.2, linestyle="--",
                     label=f"{threshold_label} {threshold:.3f}")
    axes.set(xlabel="score = sigmoid(score logit)", ylabel="images")
    axes.legend(fontsize=7, frameon=False)
    axes.set_title(title, fontsize=9)
    return _png(figure)


def prediction_histogram(scores: Sequence[float], threshold: float) -> tuple[str, float, float]:
    """Histogram of predicted scores on 0..1 with the threshold line -> (PNG data: URI, left and
    right edge of the plotting area as fractions of the image width), so that a page can move a
    marker over the image to another threshold."""
    figure, axes = _figure(4.8, 2.2)
    axes.hist(scores, bins=np.linspace(0, 1, 51), color="#6b7a90")
    axes.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=1.2, linestyle="--")
    axes.set(xlim=(0, 1), xlabel="score", ylabel="images")
    box = axes.get_position()
    return _png(figure), float(box.x0), float(box.x1)
