// Charts: the traces (speed, RPM, throttle, brake, gear with one shared cursor), the per-lap
// anomaly score with its threshold line, a generic time chart, and the track map (a canvas).
import uPlot from "./vendor/uplot.esm.js";

const PALETTE = ["#4cc2ff", "#ff8a3d", "#3ddc84", "#ff5c9d", "#ffd23f", "#9d7bff", "#2ee6d6", "#ff5c5c",
  "#a3e635", "#f472b6", "#60a5fa", "#fbbf24", "#34d399", "#e879f9", "#f87171", "#38bdf8", "#facc15",
  "#4ade80", "#c084fc", "#fb923c"];

/** A stable colour per car. */
export function carColour(driver) {
  let h = 0;
  for (const c of driver) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function axes(yLabel, time = true) {
  const stroke = css("--muted");
  const grid = { stroke: css("--line"), width: 1 };
  const font = "11px system-ui, sans-serif";
  return [
    { stroke, grid, ticks: grid, show: time, size: time ? 24 : 0, font },
    { stroke, grid, ticks: grid, label: yLabel, size: 56, labelSize: 12, font, labelFont: font },
  ];
}

function sizeOf(el) {
  return { width: Math.max(100, el.clientWidth), height: Math.max(40, el.clientHeight) };
}

/** Re-sizes the charts when their boxes change. */
function autoSize(el, plot) {
  new ResizeObserver(() => plot.setSize(sizeOf(el))).observe(el);
}

export const CHANNELS = [
  ["speed", "km/h"],
  ["rpm", "RPM"],
  ["throttle", "throttle %"],
  ["brake", "brake"],
  ["gear", "gear"],
];

/** Five stacked trace charts over the same time axis, cursor synced. */
export class Traces {
  constructor(root) {
    this.root = root;
    this.plots = [];
    this.cars = [];
  }

  /** rows: {driver: [{t (ms), speed, rpm, throttle, brake, gear}] ascending}, joined on time. */
  draw(cars, rows) {
    if (this.plots.length === 0 || cars.join() !== this.cars.join()) this.build(cars);
    if (cars.length === 0) {
      this.plots.forEach((p) => p.setData([[]]));
      return;
    }
    const tables = cars.map((c) => [
      rows[c].map((r) => r.t / 1000),
      ...CHANNELS.map(([ch]) => rows[c].map((r) => r[ch] ?? null)),
    ]);
    const joined = uPlot.join(tables);
    CHANNELS.forEach((_, i) => {
      this.plots[i].setData([joined[0], ...cars.map((_, k) => joined[1 + k * CHANNELS.length + i])]);
    });
  }

  build(cars) {
    this.plots.forEach((p) => p.destroy());
    this.root.replaceChildren();
    this.cars = cars;
    this.plots = CHANNELS.map(([ch, label], i) => {
      const el = document.createElement("div");
      el.className = "trace";
      el.dataset.channel = ch;
      this.root.append(el);
      const last = i === CHANNELS.length - 1;
      const opts = {
        ...sizeOf(el),
        cursor: { sync: { key: "traces", setSeries: false }, drag: { x: false, y: false } },
        legend: { show: false },
        scales: { x: { time: true } },
        axes: axes(label, last),
        series: [
          {},
          ...cars.map((c) => ({
            label: c,
            stroke: carColour(c),
            width: 1.25,
            paths: ch === "gear" || ch === "brake" ? uPlot.paths.stepped({ align: 1 }) : undefined,
            points: { show: false },
          })),
        ],
      };
      const plot = new uPlot(opts, [[], ...cars.map(() => [])], el);
      autoSize(el, plot);
      return plot;
    });
  }
}

/** Score per lap, one point series per car, and the threshold as a line. */
export class AnomalyChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.cars = [];
  }

  /** laps: lap numbers; byCar: {driver: scores aligned on laps (null where none)}. */
  draw(cars, laps, byCar, threshold) {
    if (!this.plot || cars.join() !== this.cars.join()) this.build(cars);
    const line = laps.map(() => threshold);
    this.plot.setData([laps, ...cars.map((c) => byCar[c]), line]);
  }

  build(cars) {
    this.plot?.destroy();
    this.cars = cars;
    const opts = {
      ...sizeOf(this.el),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false } },
      axes: [
        { stroke: css("--muted"), grid: { stroke: css("--line") }, label: "lap", labelSize: 14, size: 36,
          incrs: [1, 2, 5, 10, 20], values: (_, ticks) => ticks.map((t) => t.toFixed(0)) },
        { stroke: css("--muted"), grid: { stroke: css("--line") }, label: "score", size: 48, labelSize: 14 },
      ],
      series: [
        {},
        ...cars.map((c) => ({
          label: c,
          stroke: carColour(c),
          width: 0,
          paths: () => null,
          points: { show: true, size: 5, fill: carColour(c) },
        })),
        { label: "threshold", stroke: css("--bad"), width: 1.5, dash: [6, 4], points: { show: false } },
      ],
    };
    this.plot = new uPlot(opts, [[], ...cars.map(() => []), []], this.el);
    autoSize(this.el, this.plot);
  }
}

/** A generic chart: numeric columns of a query over its time column. */
export class TimeChart {
  constructor(el) {
    this.el = el;
    this.plot = null;
    this.key = "";
  }

  clear() {
    this.plot?.destroy();
    this.plot = null;
    this.key = "";
    this.el.replaceChildren();
  }

  draw(columns, data) {
    const key = columns.join();
    if (key !== this.key) {
      this.clear();
      this.key = key;
      this.plot = new uPlot(
        {
          ...sizeOf(this.el),
          scales: { x: { time: true } },
          axes: axes("", true),
          series: [{}, ...columns.map((c, i) => ({
            label: c, stroke: PALETTE[i], width: 0, paths: () => null,
            points: { show: true, size: 4, fill: PALETTE[i] },
          }))],
        },
        [[], ...columns.map(() => [])],
        this.el,
      );
      autoSize(this.el, this.plot);
    }
    this.plot.setData(data);
  }
}

/** The track map: the outline coloured by speed, a dot per car at its last position. */
export class TrackMap {
  constructor(canvas) {
    this.canvas = canvas;
    this.outline = []; // [x, y, speed]
  }

  /** Adds outline points (from one car's trace, thinned). */
  learn(points) {
    for (const p of points) this.outline.push(p);
    if (this.outline.length > 4000) this.outline.splice(0, this.outline.length - 4000);
  }

  draw(cars, selected) {
    const c = this.canvas;
    // What the canvas shows, for screen readers: each car and where it is (metres).
    c.setAttribute("aria-label", "Track map: " + cars.map((k) => `${k.driver} ${Math.round(k.x)},${Math.round(k.y)}`).join("; "));
    const { clientWidth: w, clientHeight: h } = c;
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const pts = this.outline.concat(cars.map((k) => [k.x, k.y, 0]));
    if (pts.length === 0) return;
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    const pad = 24;
    const s = Math.min((w - 2 * pad) / (x1 - x0 || 1), (h - 2 * pad) / (y1 - y0 || 1));
    // Centred in the canvas, north up.
    const ox = (w - (x1 - x0) * s) / 2;
    const oy = (h - (y1 - y0) * s) / 2;
    const px = (x) => ox + (x - x0) * s;
    const py = (y) => h - oy - (y - y0) * s;
    for (const [x, y, v] of this.outline) {
      // 80 km/h blue ... 330 km/h red
      const hue = 220 - Math.max(0, Math.min(1, (v - 80) / 250)) * 220;
      ctx.fillStyle = `hsl(${hue} 85% 55%)`;
      ctx.fillRect(px(x) - 1, py(y) - 1, 2.5, 2.5);
    }
    ctx.font = "11px system-ui, sans-serif";
    for (const k of cars) {
      const on = selected.includes(k.driver);
      ctx.beginPath();
      ctx.arc(px(k.x), py(k.y), on ? 6 : 4, 0, 2 * Math.PI);
      ctx.fillStyle = carColour(k.driver);
      ctx.fill();
      ctx.strokeStyle = css("--text");
      ctx.lineWidth = on ? 2 : 0.5;
      ctx.stroke();
      if (on) { ctx.fillStyle = css("--text"); ctx.fillText(k.driver, px(k.x) + 8, py(k.y) + 4); }
    }
  }
}
