// maas dashboard: draws the charts of a page with uPlot (vendor/uplot). Each chart is an
// element with data-chart="<id>", whose data is the JSON of <script type="application/json"
// id="<id>"> (not executed: the Content-Security-Policy allows scripts from 'self' only):
//   {"title": "...", "tz": "UTC", "bars": true, "x": [unix seconds...], "x_range": [from, to],
//    "series": [{"label": "...", "color": "#...", "values": [...]}]}
(function () {
  "use strict";
  function draw(el) {
    var src = document.getElementById(el.dataset.chart);
    if (!src) return;
    var d = JSON.parse(src.textContent);
    var bars = d.bars && uPlot.paths && uPlot.paths.bars;
    var series = [{}];
    d.series.forEach(function (s, i) {
      var one = { label: s.label, stroke: s.color, width: 2, points: { show: d.x.length < 60 } };
      if (bars) {
        one.fill = s.color + "cc";
        one.paths = uPlot.paths.bars({ size: [i === 0 ? 0.7 : 0.35], align: 0 });
        one.points = { show: false };
      }
      series.push(one);
    });
    var opts = {
      title: d.title,
      width: Math.max(320, el.clientWidth - 16),
      height: 280,
      series: series,
      scales: {
        x: { time: true, range: function () { return d.x_range; } },
        y: { range: function (u, min, max) { return [0, Math.max(1, max) * 1.1]; } },
      },
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), d.tz || "UTC"); },
    };
    var data = [d.x].concat(d.series.map(function (s) { return s.values; }));
    el.textContent = "";
    new uPlot(opts, data, el);
    el.dataset.drawn = "true";
  }
  document.querySelectorAll("[data-chart]").forEach(draw);
  // Meters: their width comes from data-pct (set through the DOM: no inline style attribute).
  document.querySelectorAll(".meter > span[data-pct]").forEach(function (s) {
    s.style.width = s.dataset.pct + "%";
  });
})();
