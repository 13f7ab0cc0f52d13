// The charts, drawn with the vendored uPlot (window.uPlot): throughput and queue depth over
// the last minutes (GET /api/history, then each tick's point), jobs by state and by task,
// and run/wait time percentiles (from the stats).

import { fmtSeconds, setText } from "./dom.js";

const WINDOW = 300; // seconds of history kept on screen
const COLORS = {
  completed: "#1a7f37", failed: "#cf222e", queued: "#0969da", scheduled: "#8250df",
  running: "#bf8700", dead: "#6e7781", cancelled: "#afb8c1", run: "#0969da", wait: "#bf8700",
};
const STATES = ["queued", "scheduled", "running", "completed", "dead", "cancelled"];
const MAX_TASKS = 8;

function size(node) {
  return { width: Math.max(200, node.clientWidth), height: 170 };
}

function lineChart(node, series) {
  const opts = {
    ...size(node),
    cursor: { drag: { x: false, y: false } },
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    legend: { live: false },
    axes: [{ font: "11px system-ui" }, { size: 46, font: "11px system-ui" }],
    series: [{}, ...series.map(([label, color]) => ({
      label, stroke: color, width: 2, points: { show: false },
    }))],
  };
  return new window.uPlot(opts, [[], ...series.map(() => [])], node);
}

// Bars by category. `across`: categories down the left, bars to the right (long names
// stay readable); otherwise categories along the bottom.
function barChart(node, series, { across = false } = {}) {
  const bars = window.uPlot.paths.bars;
  const n = series.length;
  const labels = (u, splits) => splits.map((i) => node.labels[i] ?? "");
  const opts = {
    ...size(node),
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    legend: { show: n > 1, live: false },
    scales: {
      x: { time: false, ori: across ? 1 : 0, dir: across ? -1 : 1,
        range: (u) => [-0.5, Math.max(0.5, u.data[0].length - 0.5)] },
      y: { ori: across ? 0 : 1, range: (u, min, max) => [0, Math.max(1, max * 1.15)] },
    },
    axes: [
      { splits: (u) => u.data[0], values: labels, gap: 4, grid: { show: false },
        side: across ? 3 : 2, size: across ? 96 : 30, font: "11px system-ui" },
      { side: across ? 2 : 3, size: across ? 30 : 46, font: "11px system-ui" },
    ],
    series: [{}, ...series.map(([label, color], i) => ({
      label, fill: color, stroke: color, width: 0, points: { show: false },
      paths: bars({ size: [0.7 / n, 60], align: n === 1 ? 0 : i === 0 ? -1 : 1 }),
    }))],
  };
  node.labels = [];
  return new window.uPlot(opts, [[], ...series.map(() => [])], node);
}

export class Charts {
  constructor(nodes) {
    this.nodes = nodes;
    this.points = [];
    this.ready = typeof window.uPlot === "function";
    if (!this.ready) return;
    this.throughput = lineChart(nodes.throughput,
      [["completed/s", COLORS.completed], ["failed/s", COLORS.failed]]);
    this.depth = lineChart(nodes.depth, [["queued", COLORS.queued],
      ["scheduled", COLORS.scheduled], ["running", COLORS.running]]);
    this.states = barChart(nodes.states, [["jobs", COLORS.queued]], { across: true });
    this.tasks = barChart(nodes.tasks, [["jobs", COLORS.completed]], { across: true });
    this.times = barChart(nodes.times, [["run", COLORS.run], ["wait", COLORS.wait]]);
    this.charts = [this.throughput, this.depth, this.states, this.tasks, this.times];
    const observer = new ResizeObserver(() => this.#resize());
    this.charts.forEach((chart) => observer.observe(chart.root.parentElement));
  }

  #resize() {
    for (const chart of this.charts) {
      const want = size(chart.root.parentElement);
      if (want.width !== chart.width) chart.setSize(want);
    }
  }

  /** The first load: the points of the last minutes. */
  history(points) {
    this.points = points.slice(-WINDOW);
    this.#drawLines();
  }

  /** Each tick: its newest point and the stats. */
  update(point, stats) {
    if (!this.ready) return;
    const last = this.points[this.points.length - 1];
    if (point && (!last || point.at > last.at)) {
      this.points.push(point);
      if (this.points.length > WINDOW) this.points.shift();
      this.#drawLines();
    }
    this.#drawBars(stats);
  }

  #drawLines() {
    if (!this.ready) return;
    const p = this.points;
    const at = p.map((x) => x.at);
    const rate = (key) => p.map((x, i) => (i === 0 ? null
      : Math.max(0, (x[key] - p[i - 1][key]) / Math.max(0.001, x.at - p[i - 1].at))));
    this.throughput.setData([at, rate("completed"), rate("failed")]);
    this.depth.setData([at, p.map((x) => x.queued), p.map((x) => x.scheduled),
      p.map((x) => x.running)]);
  }

  #drawBars(stats) {
    setBars(this.states, STATES, [STATES.map((s) => stats.states[s] ?? 0)]);
    const tasks = Object.entries(stats.tasks)
      .map(([name, counts]) => [name, Object.values(counts).reduce((a, b) => a + b, 0)])
      .sort((a, b) => b[1] - a[1]).slice(0, MAX_TASKS);
    setBars(this.tasks, tasks.map(([name]) => name), [tasks.map(([, n]) => n)]);
    const qs = ["p50", "p95", "p99"];
    setBars(this.times, qs, [qs.map((q) => stats.run_time[q]), qs.map((q) => stats.wait_time[q])]);
    if (this.nodes.timesText) {
      const line = (name, t) => `${name}: ${qs.map((q) => `${q} ${fmtSeconds(t[q])}`).join(" · ")}`;
      setText(this.nodes.timesText,
        `${line("run", stats.run_time)} — ${line("wait", stats.wait_time)}`);
    }
  }
}

function setBars(chart, labels, values) {
  const node = chart.root.parentElement;
  const key = JSON.stringify([labels, values]);
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  node.labels = labels;
  chart.setData([labels.map((_, i) => i), ...values]);
}
