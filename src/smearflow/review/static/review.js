// smearflow review station: reclassify a cell with one click or one key, without reloading the page.
// Every form works without this script too (the server answers with a redirect).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const message = document.getElementById("message");
  const tiles = Array.from(document.querySelectorAll(".tile[data-cell]"));
  const keys = {"1": "basophil", "2": "eosinophil", "3": "erythroblast", "4": "ig", "5": "lymphocyte",
                "6": "monocyte", "7": "neutrophil", "8": "platelet", "a": "artefact"};

  function say(text, isError) {
    if (!message) return;
    message.textContent = text;
    message.className = isError ? "error" : "small";
  }

  function fmt(value) { return value === null ? "-" : value.toFixed(1); }

  function updateCounts(differential) {
    for (const row of differential.rows) {
      const id = row["class"].replace(/[^A-Za-z0-9]/g, "-");
      const count = document.getElementById("current-count-" + id);
      if (!count) continue;
      count.textContent = String(row.current.count);
      document.getElementById("current-pct-" + id).textContent = fmt(row.current.percent);
      document.getElementById("current-ci-" + id).textContent =
        row.current.ci_low === null ? "" : fmt(row.current.ci_low) + "\u2013" + fmt(row.current.ci_high);
    }
    document.getElementById("current-total").textContent = String(differential.current_total);
    document.getElementById("artefact-count").textContent = String(differential.artefacts);
    document.getElementById("changed-count").textContent = String(differential.changed);
    const state = document.getElementById("state");
    state.textContent = differential.state;
    state.className = "state state-" + differential.state.replace(/[^A-Za-z0-9]/g, "-");
  }

  function updateTile(tile, cell) {
    for (const name of Array.from(tile.classList)) {
      if (name.startsWith("label-")) tile.classList.remove(name);
    }
    tile.classList.add("label-" + cell.final_label.replace(/[^A-Za-z0-9]/g, "-"));
    document.getElementById("final-" + cell.id).textContent = cell.review_label ? "reviewer: " + cell.review_label : "";
    for (const button of tile.querySelectorAll("button[name=label]")) {
      button.classList.toggle("current", button.value === cell.final_label);
    }
  }

  async function send(tile, label) {
    const form = tile.querySelector("form.review-form");
    if (!form) return false;
    const data = new FormData(form);
    data.set("label", label);
    let response;
    try {
      response = await fetch(form.action, {
        method: "POST", body: data, credentials: "same-origin",
        headers: {"Accept": "application/json", "X-CSRF-Token": csrf},
      });
    } catch (error) {
      say("not saved: the station did not answer", true);
      return false;
    }
    const body = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) {
      say("not saved: " + body.detail, true);
      return false;
    }
    updateTile(tile, body.cell);
    updateCounts(body.differential);
    say("cell " + body.cell.id + ": " + body.cell.final_label, false);
    return true;
  }

  for (const tile of tiles) {
    const form = tile.querySelector("form.review-form");
    if (form) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        if (event.submitter) send(tile, event.submitter.value);
      });
    }
    tile.addEventListener("click", (event) => { if (event.target.tagName !== "BUTTON") tile.focus(); });
    tile.addEventListener("keydown", async (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const index = tiles.indexOf(tile);
      if (event.key === "j" || event.key === "ArrowRight") {
        event.preventDefault();
        if (index + 1 < tiles.length) tiles[index + 1].focus();
      } else if (event.key === "k" || event.key === "ArrowLeft") {
        event.preventDefault();
        if (index > 0) tiles[index - 1].focus();
      } else if (keys[event.key.toLowerCase()]) {
        event.preventDefault();
        if (await send(tile, keys[event.key.toLowerCase()]) && index + 1 < tiles.length) tiles[index + 1].focus();
      }
    });
  }
});
