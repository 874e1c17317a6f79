// `/`: the plant at a glance, from /api/machines, sorted firing first.
"use strict";

const shown = new Set(GROUPS);
let machines = [];

function rank(m) {
  const g = GROUPS.indexOf(group(m));
  // Within firing, the furthest over its threshold first; otherwise by name.
  const over = m.alert === "firing" && m.threshold ? -(m.score ?? 0) / m.threshold : 0;
  return [g, over];
}

function compare(a, b) {
  const [ga, oa] = rank(a);
  const [gb, ob] = rank(b);
  return ga - gb || oa - ob || a.machine.localeCompare(b.machine);
}

function alertCell(m, now) {
  if (m.alert !== "firing") return m.alert === "pending" ? '<span class="muted">pending</span>' : "";
  const lasted = m.scored_until !== null && m.alert_started_at !== null
    ? m.scored_until - m.alert_started_at : null;
  const ack = m.acknowledged_by
    ? `acknowledged by ${esc(m.acknowledged_by)}` : '<b class="bad">not acknowledged</b>';
  return `since ${esc(clock(m.alert_started_at))} (${duration(lasted)})`
    + `<br>peak ${num(m.alert_peak / m.threshold)}× · ${topSensors(m.top_sensors)}<br>${ack}`;
}

function scoreCell(m) {
  if (m.score === null || !m.threshold) return '<span class="muted">–</span>';
  const ratio = m.score / m.threshold;
  const width = Math.min(100, ratio * 50);
  return `<span class="ratio"><i class="${ratio > 1 ? "over" : ""}" style="width:${width}%">`
    + `</i></span>${num(ratio)}×`;
}

function learningCell(m) {
  if (m.fitting) return "fitting a model";
  if (m.state === "learning" || (m.model_version === null && m.learning_windows > 0)) {
    return `${m.learning_windows} of ${m.learning_needed} windows`;
  }
  return "";
}

function modelCell(m, now) {
  const version = m.model_version === null ? "none" : `v${m.model_version}`;
  if (!m.last_fit) return version;
  return `${version} <span class="muted">· ${esc(m.last_fit)} ${duration(now - m.last_fit_at)} ago</span>`;
}

function row(m, now) {
  const g = group(m);
  const href = `/machines/${encodeURIComponent(m.machine)}`;
  return `<tr class="${g}" data-machine="${esc(m.machine)}" data-group="${g}">`
    + `<td><a href="${href}">${esc(m.machine)}</a></td><td>${badge(m)}</td>`
    + `<td>${alertCell(m, now)}</td><td class="num">${scoreCell(m)}</td>`
    + `<td class="num">${duration(now - m.last_seen)} ago</td><td>${learningCell(m)}</td>`
    + `<td>${modelCell(m, now)}</td></tr>`;
}

function render() {
  const now = Date.now() / 1000;
  const words = document.getElementById("search").value.trim().toLowerCase();
  const matches = (m) => !words || m.machine.toLowerCase().includes(words)
    || m.sensors.some((s) => s.toLowerCase().includes(words));
  const rows = machines.filter((m) => shown.has(group(m)) && matches(m)).sort(compare);
  document.querySelector("#plant tbody").innerHTML = rows.map((m) => row(m, now)).join("");
  const counts = Object.fromEntries(GROUPS.map((g) => [g, 0]));
  machines.forEach((m) => { counts[group(m)] += 1; });
  document.getElementById("counts").innerHTML = GROUPS
    .map((g) => `<span>${GROUP_LABELS[g]} <span class="badge ${g}">${counts[g]}</span></span>`)
    .join("") + `<span class="muted">${rows.length} of ${machines.length} shown</span>`;
}

function filters() {
  document.getElementById("filters").innerHTML = GROUPS.map((g) =>
    `<label><input type="checkbox" data-group="${g}" checked> ${GROUP_LABELS[g]}</label>`)
    .join(" ");
  document.querySelectorAll("#filters input").forEach((box) => {
    box.addEventListener("change", () => {
      if (box.checked) shown.add(box.dataset.group); else shown.delete(box.dataset.group);
      render();
    });
  });
  document.getElementById("search").addEventListener("input", render);
}

filters();
poll(async () => {
  [machines] = await Promise.all([getJSON("/api/machines"), showHealth()]);
  render();
});
