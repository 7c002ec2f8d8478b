// Watch a submission's state without reloading: long-poll its JSON until it is graded.
// Each request names the view shown (its tag); the server answers as soon as the view
// changes (the queue wakes it), or after `wait` seconds with the same view.
// Everything from the server is inserted as text (textContent), never as HTML.
"use strict";
(function () {
  const box = document.getElementById("submission");
  if (!box) return;
  const $ = (id) => document.getElementById(id);
  const num = (x) => (x === null || x === undefined ? "" : String(+x));
  function show(view) {
    $("state").textContent = view.state;
    let waiting = "";
    if (view.state === "queued") {
      waiting = `(${view.ahead} ahead of you`;
      if (view.estimate_s !== null && view.estimate_s !== undefined) {
        const s = view.estimate_s;
        waiting += `, feedback in about ${s < 90 ? `${s} s` : `${Math.round(s / 60)} min`}`;
      }
      waiting += ")";
    }
    $("ahead").textContent = waiting;
    if (view.state !== "graded") return false;
    $("score").textContent = `${num(view.score)} / ${num(view.max_score)}`;
    $("status").textContent = view.status;
    $("detail").textContent = view.detail;
    const body = $("checks").querySelector("tbody");
    body.replaceChildren();
    for (const c of view.checks) {
      const row = document.createElement("tr");
      row.className = c.passed ? "pass" : "fail";
      for (const text of [c.name, `${num(c.points)} / ${num(c.max_points)}`,
                          c.passed ? "passed" : "failed", c.message]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.appendChild(row);
    }
    for (const frame of document.querySelectorAll("iframe.feedback")) {
      frame.src = frame.dataset.src;
    }
    $("result").hidden = $("checks").hidden = $("feedback").hidden = false;
    return true;
  }
  let since = "";
  async function poll() {
    try {
      const query = since ? `?since=${encodeURIComponent(since)}&wait=25` : "";
      const response = await fetch(box.dataset.url + query, { credentials: "same-origin" });
      if (response.ok) {
        const view = await response.json();
        if (show(view)) return;
        since = view.tag;
        setTimeout(poll, 0);
        return;
      }
    } catch (e) { /* the server restarts: keep trying */ }
    since = "";
    setTimeout(poll, 1000);
  }
  if (box.dataset.state !== "graded") poll();
})();
