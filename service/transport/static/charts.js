// Small SVG charts for the machine page: time series and a scatter map. Each chart's
// <svg> carries `data-points`, the number of data points it draws.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// A chart is as wide as its box, so its labels keep their size on any screen.
function widthOf(container) {
  return Math.max(280, Math.round(container.clientWidth || 640));
}
const PAD = { left: 52, right: 10, top: 8, bottom: 22 };

function svgElement(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, String(v)));
  return el;
}

function extent(values, fallback) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return fallback;
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  return [lo, hi];
}

function ticks(lo, hi, count) {
  return Array.from({ length: count }, (_, i) => lo + ((hi - lo) * i) / (count - 1));
}

function timeTick(ts, span) {
  const d = new Date(ts * 1000);
  const opts = span > 86400 * 2 ? { month: "short", day: "numeric" }
    : { hour: "2-digit", minute: "2-digit", hour12: false };
  if (span < 600) opts.second = "2-digit";
  return d.toLocaleTimeString([], opts).replace(/^.*, /, "");
}

function frame(container, height, xs, ys, log) {
  const W = widthOf(container);
  const svg = svgElement("svg", { viewBox: `0 0 ${W} ${height}`, class: "chart",
    role: "img" });
  const [x0, x1] = extent(xs, [0, 1]);
  const yv = log ? ys.filter((y) => y > 0).map(Math.log10) : ys;
  const [y0, y1] = extent(yv, [0, 1]);
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => {
    const v = log ? Math.log10(Math.max(y, 10 ** y0)) : y;
    return height - PAD.bottom - ((v - y0) / (y1 - y0)) * (height - PAD.top - PAD.bottom);
  };
  ticks(y0, y1, 4).forEach((t) => {
    const y = height - PAD.bottom - ((t - y0) / (y1 - y0)) * (height - PAD.top - PAD.bottom);
    svg.append(svgElement("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y,
      class: "gridline" }));
    const label = svgElement("text", { x: PAD.left - 4, y: y + 3, "text-anchor": "end" });
    label.textContent = num(log ? 10 ** t : t);
    svg.append(label);
  });
  ticks(x0, x1, 5).forEach((t, i) => {
    const anchor = ["start", "middle", "middle", "middle", "end"][i];
    const label = svgElement("text", { x: px(t), y: height - 6, "text-anchor": anchor });
    label.textContent = timeTick(t, x1 - x0);
    svg.append(label);
  });
  svg.append(svgElement("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top,
    y2: height - PAD.bottom, class: "axis" }));
  container.replaceChildren(svg);
  return { svg, px, py };
}

// series: [{points: [[ts, y], ...], color, dash?, gap?}]; a step longer than `gap`
// seconds breaks the line.
function lineChart(container, series, { height = 160, log = false, title = "" } = {}) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]).filter((y) => y !== null));
  const { svg, px, py } = frame(container, height, xs, ys, log);
  let drawn = 0;
  series.forEach((s) => {
    let d = "";
    let previous = null;
    s.points.forEach(([x, y]) => {
      if (y === null || !Number.isFinite(y)) { previous = null; return; }
      const broken = previous === null || (s.gap && x - previous > s.gap);
      d += `${broken ? "M" : "L"}${px(x).toFixed(1)},${py(y).toFixed(1)}`;
      previous = x;
      drawn += 1;
    });
    if (d) {
      svg.append(svgElement("path", { d, fill: "none", stroke: s.color,
        "stroke-width": s.width || 1.5, "stroke-dasharray": s.dash || "none" }));
    }
  });
  if (title) {
    const label = svgElement("text", { x: PAD.left + 4, y: PAD.top + 10 });
    label.textContent = title;
    svg.append(label);
  }
  if (!drawn) empty(svg, height);
  svg.dataset.points = String(drawn);
  return svg;
}

// Said in the chart, rather than axes over nothing: a machine still learning has no scores.
function empty(svg, height) {
  const label = svgElement("text", { x: PAD.left + 20, y: height / 2 });
  label.textContent = "no data yet";
  svg.append(label);
}

// Widens [lo, hi] by `share` of its span on each side.
function padded([lo, hi], share) {
  const pad = (hi - lo) * share;
  return [lo - pad, hi + pad];
}

// points: [{x, y, color, kind, title}], drawn in order (later on top). The frame fits the
// points of the kinds in `framed` (all when none); a point outside it sits on its edge, with
// "off the map" in its title, so a far fault does not shrink the known states to a dot.
function scatter(container, points, { height = 320, framed = [] } = {}) {
  const W = widthOf(container);
  const svg = svgElement("svg", { viewBox: `0 0 ${W} ${height}`, class: "chart",
    role: "img" });
  const inFrame = points.filter((p) => !framed.length || framed.includes(p.kind));
  const base = inFrame.length ? inFrame : points;
  const [x0, x1] = padded(extent(base.map((p) => p.x), [0, 1]), 0.15);
  const [y0, y1] = padded(extent(base.map((p) => p.y), [0, 1]), 0.15);
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const px = (x) => 12 + ((clamp(x, x0, x1) - x0) / (x1 - x0)) * (W - 24);
  const py = (y) => height - 12 - ((clamp(y, y0, y1) - y0) / (y1 - y0)) * (height - 24);
  points.forEach((p) => {
    const off = p.x < x0 || p.x > x1 || p.y < y0 || p.y > y1;
    if (off) p.title += " (off the map: drawn on its edge)";
    const dot = svgElement("circle", { cx: px(p.x).toFixed(1), cy: py(p.y).toFixed(1),
      r: p.kind === "train" ? 2.5 : 4, fill: p.color, class: `pt ${p.kind}`,
      "fill-opacity": p.kind === "train" ? 0.5 : 0.9 });
    const tip = svgElement("title", {});
    tip.textContent = p.title;
    dot.append(tip);
    svg.append(dot);
  });
  if (!points.length) empty(svg, height);
  svg.dataset.points = String(points.length);
  container.replaceChildren(svg);
  return svg;
}

// Green below the threshold through amber to it; red is for alerts.
function scoreColour(ratio) {
  const t = Math.max(0, Math.min(1, ratio));
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(46, 249)},${mix(125, 168)},${mix(50, 37)})`;
}

const SENSOR_COLOURS = ["#1565c0", "#ef8f00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f",
  "#5d4037", "#ad1457", "#9e9d24", "#37474f"];
