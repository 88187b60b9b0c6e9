// pollbench: a drawn chart for the web UI's "Long polling" tab.
// Locust's extended tabs render a table only; this script (added to Locust's page by
// loadtests/webui.py) draws delivery latency p50 / p95 / p99 / max over the test (up to 5 min)
// above that table, from /pollbench/live.json (one point per second, the lossless data).
(function () {
  "use strict";
  const TAB = "long-polling";
  const WINDOW_S = 300;
  const W = 960, H = 240, L = 56, R = 16, T = 28, B = 28;
  const LINES = [["p50", 1, "#2e7d32"], ["p95", 2, "#ef6c00"], ["p99", 3, "#c62828"],
                 ["max", 4, "#6a1b9a"]];
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function onTab() {
    return new URLSearchParams(window.location.search).get("tab") === TAB;
  }

  // The chart's box, right before the tab's table (re-inserted if React re-rendered it away).
  function box() {
    let chart = document.getElementById("pollbench-chart");
    if (!onTab()) {
      if (chart) chart.remove();
      return null;
    }
    const table = document.querySelector("table");
    if (!table) return null;
    const anchor = table.closest(".MuiTableContainer-root") || table;
    if (!chart) {
      chart = document.createElement("div");
      chart.id = "pollbench-chart";
      chart.style.margin = "8px 0 16px 0";
    }
    if (chart.nextElementSibling !== anchor) anchor.parentNode.insertBefore(chart, anchor);
    return chart;
  }

  function draw(chart, series) {
    const now = series.length ? series[series.length - 1][0] : 0;
    const points = series.filter((p) => p[0] > now - WINDOW_S);
    // the axis spans the test so far: at least a minute, at most WINDOW_S
    const span = Math.min(WINDOW_S, Math.max(60, points.length ? now - points[0][0] : 60));
    let top = 0;
    for (const p of points) for (const [, i] of LINES) if (p[i] !== null) top = Math.max(top, p[i]);
    top = top > 0 ? top * 1.1 : 1;
    const x = (t) => L + (W - L - R) * (1 - (now - t) / span);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const svg = el("svg", {width: "100%", viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": "delivery latency over time"});
    svg.appendChild(el("text", {x: L, y: 16, "font-size": 13, "font-family": "sans-serif"},
      "delivery latency (ms), one point per second (up to the last 5 min)"));
    for (const f of [0, 0.5, 1]) {
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y(top * f), y2: y(top * f),
                                  stroke: "#ccc", "stroke-width": 1}));
      svg.appendChild(el("text", {x: L - 6, y: y(top * f) + 4, "text-anchor": "end",
                                  "font-size": 11, "font-family": "sans-serif"},
        (top * f).toFixed(top < 10 ? 2 : 1)));
    }
    for (const [label, t] of [[`-${Math.round(span)} s`, now - span],
                              [`-${Math.round(span / 2)} s`, now - span / 2], ["now", now]]) {
      svg.appendChild(el("text", {x: x(t), y: H - 8, "text-anchor": "middle", "font-size": 11,
                                  "font-family": "sans-serif"}, label));
    }
    LINES.forEach(([label, i, color], k) => {
      // a gap (no delivery in a second) breaks the line
      const runs = [[]];
      for (const p of points) {
        if (p[i] === null) { if (runs[runs.length - 1].length) runs.push([]); continue; }
        runs[runs.length - 1].push(`${x(p[0]).toFixed(1)},${y(p[i]).toFixed(1)}`);
      }
      for (const run of runs) {
        if (!run.length) continue;
        svg.appendChild(el("polyline", {points: run.join(" "), fill: "none", stroke: color,
                                        "stroke-width": 1.5, "data-quantile": label}));
      }
      svg.appendChild(el("text", {x: W - R - 260 + k * 65, y: 16, fill: color,
                                  "font-size": 12, "font-family": "sans-serif"}, label));
    });
    chart.replaceChildren(svg);
  }

  async function tick() {
    const chart = box();
    if (!chart) return;
    try {
      const answer = await fetch("/pollbench/live.json", {cache: "no-store"});
      if (answer.ok) draw(chart, (await answer.json()).series || []);
    } catch (e) {
      // the session is ending: keep the last chart
    }
  }

  window.setInterval(tick, 2000);
  window.addEventListener("popstate", tick);
  document.addEventListener("click", () => window.setTimeout(tick, 50));
})();
