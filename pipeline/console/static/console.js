// openimm console: small progressive enhancements (no framework, no build step).
"use strict";

function refreshPartials() {
  // <div data-refresh="/console/..." data-every="2000">: replace the content periodically.
  document.querySelectorAll("[data-refresh]").forEach((el) => {
    const every = parseInt(el.dataset.every || "3000", 10);
    const tick = async () => {
      // Not while the user is choosing something in it: the refresh would reset the choice.
      if (el.contains(document.activeElement) && document.activeElement.matches("select, input, textarea")) {
        setTimeout(tick, every); return;
      }
      try {
        const res = await fetch(el.dataset.refresh, { headers: { "x-console-partial": "1" } });
        if (res.status === 401) { location.reload(); return; }
        if (res.ok) { el.innerHTML = await res.text(); el.dispatchEvent(new Event("refreshed")); }
      } catch (e) { /* the server restarts: try again at the next tick */ }
      setTimeout(tick, every);
    };
    setTimeout(tick, every);
  });
}

function liveTasks() {
  // <table data-sse="/console/tasks/stream?...">: progress and status pushed by the server.
  document.querySelectorAll("[data-sse]").forEach((el) => {
    const source = new EventSource(el.dataset.sse);
    source.onmessage = (msg) => {
      const t = JSON.parse(msg.data);
      const row = document.getElementById("task-" + t.TaskId);
      if (!row) return;
      const bar = row.querySelector("progress");
      if (bar) { bar.value = t.Progress; bar.title = t.Progress + " %"; }
      const pct = row.querySelector(".pct");
      if (pct) pct.textContent = t.Progress + " %";
      const status = row.querySelector(".status");
      if (status) { status.textContent = t.Status; status.className = "status " + t.Status; }
    };
  });
}

function navSelects() {
  document.querySelectorAll("select[data-nav]").forEach((sel) => {
    sel.addEventListener("change", () => {
      location.href = "/console/" + sel.dataset.nav + "?" + sel.value;
    });
  });
}

function sliders() {
  // Before/after: the "after" image is clipped to the slider's position.
  document.querySelectorAll("input[data-compare]").forEach((input) => {
    const after = document.getElementById(input.dataset.compare);
    const apply = () => { after.style.clipPath = "inset(0 " + (100 - input.value) + "% 0 0)"; };
    input.addEventListener("input", apply);
    apply();
  });
}

function seekers() {
  // Transcript lines and score-curve windows seek their player.
  document.querySelectorAll("[data-seek]").forEach((el) => {
    el.addEventListener("click", () => {
      const player = document.getElementById(el.dataset.player);
      if (player) { player.currentTime = parseFloat(el.dataset.seek); player.play(); }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  refreshPartials(); liveTasks(); navSelects(); sliders(); seekers();
});
