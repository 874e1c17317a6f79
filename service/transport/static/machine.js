// `/machines/<machine>`: one machine, from /api/machines/<machine> and its /history.
"use strict";

const machine = decodeURIComponent(location.pathname.split("/").pop());
const api = `/api/machines/${encodeURIComponent(machine)}`;
document.getElementById("name").textContent = machine;
document.title = `aemon · ${machine}`;

function summary(m) {
  const now = Date.now() / 1000;
  const rows = [
    ["state", badge(m)],
    ["score / threshold", m.threshold ? `${num(m.score)} / ${num(m.threshold)} `
      + `(${num(m.score / m.threshold)}×)` : "–"],
    ["last reading", `${duration(now - m.last_seen)} ago (event time ${esc(clock(m.newest_ts))})`],
    ["model", m.model_version === null ? "none yet" : `v${m.model_version}`
      + (m.last_fit ? `, last fit ${esc(m.last_fit)} ${duration(now - m.last_fit_at)} ago` : "")],
    ["sensors", esc(m.sensors.join(", "))],
  ];
  if (m.state === "learning" || m.fitting) {
    rows.push(["learning", m.fitting ? "fitting a model"
      : `${m.learning_windows} of ${m.learning_needed} windows`]);
  }
  if (m.alert === "firing") {
    rows.push(["alert", `since ${esc(clock(m.alert_started_at))} `
      + `(${duration(m.scored_until - m.alert_started_at)}), peak ${num(m.alert_peak / m.threshold)}×, `
      + `${topSensors(m.top_sensors)}; `
      + (m.acknowledged_by ? `acknowledged by ${esc(m.acknowledged_by)}` : "not acknowledged")]);
  }
  if (m.maintenance_until) rows.push(["maintenance until", esc(clock(m.maintenance_until))]);
  document.getElementById("summary").innerHTML = rows
    .map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
  document.getElementById("badge").innerHTML = badge(m);
  document.getElementById("span").textContent =
    `(the last ${m.history.span_seconds / 3600} h, the highest score of each `
    + `${m.history.bucket_seconds} s)`;
}

function eventText(e) {
  if (e.kind === "alert") {
    const detail = `score ${num(e.score)}, peak ${num(e.peak_score)}, threshold `
      + `${num(e.threshold)}; ${topSensors(e.top_sensors)}`
      + (e.resolution ? `; ${esc(e.resolution)}` : "")
      + (e.acknowledged_by ? `; by ${esc(e.acknowledged_by)}` : "");
    return [`alert ${esc(e.event)}`, detail];
  }
  if (e.kind === "command") {
    return [`command ${esc(e.command)}`, `by ${esc(e.by)}${e.reason ? `: ${esc(e.reason)}` : ""}`
      + (e.ok ? "" : ` <span class="bad">refused: ${esc(e.error)}</span>`)];
  }
  return [`model ${esc(e.outcome ?? "")}`, e.version ? `v${e.version}, threshold ${num(e.threshold)}`
    : "kept the current model"];
}

function events(list) {
  document.querySelector("#events tbody").innerHTML = list.map((e) => {
    const [what, detail] = eventText(e);
    return `<tr><td>${esc(clock(e.at))}</td><td>${what}</td><td>${detail}</td></tr>`;
  }).join("") || '<tr><td colspan="3" class="muted">nothing yet</td></tr>';
}

function sensorCharts(container, sensors, key, period) {
  container.replaceChildren();
  sensors.forEach((s) => {
    const box = document.createElement("div");
    container.append(box);
    const pts = s[key];
    lineChart(box, [
      { points: pts.map((p) => [p.ts, p.seen]), color: "#1565c0", gap: period * 1.5 },
      { points: pts.map((p) => [p.ts, p.expected]), color: "#ef8f00", dash: "4 2",
        gap: period * 1.5 },
    ], { height: 130, title: s.name });
  });
}

function period(sensors) {
  const pts = sensors.length ? sensors[0].points : [];
  return pts.length > 1 ? pts[1].ts - pts[0].ts : 1;
}

function latentMap(latent) {
  const points = latent.map((p) => ({
    x: p.x, y: p.y, kind: p.kind,
    color: p.kind === "train" ? "#9e9e9e" : p.kind === "alert" ? "#c62828"
      : scoreColour(p.score / (threshold || 1)),
    title: p.kind === "train" ? "training window"
      : `${p.kind} ${clock(p.ts)}: score ${num(p.score)}`,
  }));
  // Training first, alerts last: the new states are drawn on top.
  const order = { train: 0, recent: 1, alert: 2 };
  points.sort((a, b) => order[a.kind] - order[b.kind]);
  scatter(document.getElementById("latent"), points, { framed: ["train", "recent"] });
}

let threshold = null;

function history(h, bucket) {
  lineChart(document.getElementById("scores"), [
    { points: h.scores.map((p) => [p.ts, p.threshold]), color: "#c62828", dash: "5 3",
      gap: bucket * 3 },
    { points: h.scores.map((p) => [p.ts, p.score]), color: "#263238", gap: bucket * 3 },
  ], { height: 200, log: true, title: "score (black), threshold (red), log scale" });
  const step = period(h.sensors);
  sensorCharts(document.getElementById("sensors"), h.sensors, "points", step);
  const aroundAlert = h.sensors.some((s) => s.alert_points.length);
  document.getElementById("alert-section").hidden = !aroundAlert;
  if (aroundAlert) {
    sensorCharts(document.getElementById("alert-sensors"), h.sensors, "alert_points", step);
  }
  document.getElementById("shares-legend").innerHTML = h.sensors.map((s, i) =>
    `<span><i style="background:${SENSOR_COLOURS[i % 10]}"></i>${esc(s.name)}</span>`).join("");
  lineChart(document.getElementById("shares"), h.sensors.map((s, i) => ({
    points: s.share.map((p) => [p.ts, p.share]), color: SENSOR_COLOURS[i % 10], gap: bucket * 3,
  })), { height: 160 });
  latentMap(h.latent);
}

poll(async () => {
  const known = await fetch(api, { method: "GET", cache: "no-store" });
  if (known.status === 404) {
    document.getElementById("summary").innerHTML =
      `<dt>unknown</dt><dd>the daemon has no machine ${esc(machine)}: <a href="/">the plant</a></dd>`;
    return;
  }
  const [m, h] = await Promise.all([known.json(), getJSON(`${api}/history`), showHealth()]);
  threshold = m.threshold;
  summary(m);
  events(m.events);
  history(h, m.history.bucket_seconds);
});
