// The prediction report's controls: the threshold slider re-decides every card (defect when
// score > threshold, as predict.py decides), the filter hides cards by decision, the sort order
// rearranges them. At the threshold used, the decisions of predictions.csv are shown as written.
(function () {
  "use strict";
  var slider = document.getElementById("image-threshold");
  var shown = document.getElementById("threshold-value");
  var count = document.getElementById("defect-count");
  var marker = document.getElementById("threshold-marker");
  var plot = marker.parentNode;
  var filter = document.getElementById("decision-filter");
  var order = document.getElementById("sort-order");
  var grid = document.getElementById("cards");
  var cards = Array.prototype.slice.call(grid.querySelectorAll("figure.card"));
  var fileOrder = cards.slice();
  var initial = slider.value;
  var plotLeft = parseFloat(plot.getAttribute("data-plot-left"));
  var plotRight = parseFloat(plot.getAttribute("data-plot-right"));

  function score(card) { return parseFloat(card.getAttribute("data-score")); }

  function applyFilter() {
    var wanted = filter.value;
    cards.forEach(function (card) {
      card.hidden = wanted !== "all" && card.getAttribute("data-decision") !== wanted;
    });
  }

  function decide() {
    var threshold = parseFloat(slider.value);
    var asWritten = slider.value === initial;
    var defects = 0;
    cards.forEach(function (card) {
      var decision = asWritten ? card.getAttribute("data-csv-decision")
                               : (score(card) > threshold ? "defect" : "normal");
      card.setAttribute("data-decision", decision);
      card.querySelector(".decision").textContent = decision;
      if (decision === "defect") { defects += 1; }
    });
    count.textContent = defects + " of " + cards.length + " images decided defect (score > " + slider.value + ")";
    shown.textContent = slider.value;
    marker.style.left = (100 * (plotLeft + Math.min(Math.max(threshold, 0), 1) * (plotRight - plotLeft))) + "%";
    applyFilter();
  }

  function sortCards() {
    var how = order.value;
    var sorted = fileOrder.slice();
    if (how === "score-desc") { sorted.sort(function (a, b) { return score(b) - score(a); }); }
    if (how === "score-asc") { sorted.sort(function (a, b) { return score(a) - score(b); }); }
    if (how === "name") {
      sorted.sort(function (a, b) { return a.getAttribute("data-name").localeCompare(b.getAttribute("data-name")); });
    }
    var fragment = document.createDocumentFragment();
    sorted.forEach(function (card) { fragment.appendChild(card); });
    grid.appendChild(fragment);
  }

  slider.addEventListener("input", decide);
  filter.addEventListener("change", applyFilter);
  order.addEventListener("change", sortCards);
  document.getElementById("threshold-reset").addEventListener("click", function () {
    slider.value = initial;
    decide();
  });
  decide();
}());
