// aemon status pages: what both pages share. Plain JavaScript, no build step, no CDN;
// everything is read from the daemon's JSON API.
"use strict";

const POLL_MS = 5000;

// The order a shift reads the plant in, and the colour of each group.
const GROUPS = ["firing", "stale", "learning", "idle", "normal"];
const GROUP_LABELS = {
  firing: "firing", stale: "stale", learning: "learning",
  idle: "maintenance or off", normal: "normal",
};

function group(m) {
  if (m.alert === "firing") return "firing";
  if (m.state === "stale") return "stale";
  if (m.state === "learning" || m.state === "discovering") return "learning";
  if (m.state === "maintenance" || m.state === "off") return "idle";
  return "normal";
}

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function num(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const a = Math.abs(value);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} d`;
}

// Event times are the machines' own clocks (Unix seconds), shown in the browser's zone.
function clock(ts) {
  if (ts === null || ts === undefined) return "–";
  const d = new Date(ts * 1000);
  return d.toLocaleString([], { hour12: false, month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function badge(m) {
  const g = m.alert === "pending" && group(m) === "normal" ? "pending" : group(m);
  const text = m.alert === "firing" ? `firing · ${m.state}` : m.state;
  return `<span class="badge ${g}">${esc(text)}</span>`;
}

function topSensors(list) {
  return (list || []).map((s) => `${esc(s.sensor)} ${Math.round(s.share * 100)}%`).join(", ");
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  // /readyz answers 503 with its JSON while not ready: still worth showing.
  if (!response.ok && response.status !== 503) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function showHealth() {
  const el = document.getElementById("health");
  try {
    const r = await getJSON("/readyz");
    const part = (ok, yes, no) => `<span class="${ok ? "ok" : "bad"}">${ok ? yes : no}</span>`;
    el.innerHTML = [
      part(r.healthy, "healthy", "unhealthy"), part(r.ready, "ready", "not ready"),
      part(r.broker_connected, "broker connected", "broker disconnected"),
    ].join(" · ");
  } catch (err) {
    el.innerHTML = '<span class="bad">daemon unreachable</span>';
  }
}

// Calls `step` now and every POLL_MS; a failed poll is shown, and the next one retried.
function poll(step) {
  const updated = document.getElementById("updated");
  const run = async () => {
    try {
      await step();
      updated.textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
    } catch (err) {
      updated.textContent = `update failed (${err.message}); retrying`;
    }
    setTimeout(run, POLL_MS);
  };
  run();
}
