// Queues with their counts, and pause/resume (admin tokens).

import { api, describe } from "./api.js";
import { el, fill, fmtNumber, setText } from "./dom.js";

export class Queues {
  constructor(root, errorBox) {
    this.root = root;
    this.errorBox = errorBox;
    this.key = "";
  }

  /** From a tick: the stats' queues and paused list, and the workers' queues. */
  update(stats, workers) {
    const names = new Set([...Object.keys(stats.queues), ...stats.paused,
      ...workers.flatMap((w) => w.queues)]);
    const paused = new Set(stats.paused);
    const rows = [...names].sort().map((name) => {
      const counts = stats.queues[name] || {};
      return { name, paused: paused.has(name), counts,
        served: workers.filter((w) => w.queues.includes(name)).length };
    });
    const key = JSON.stringify(rows);
    if (key === this.key) return;
    this.key = key;
    if (!rows.length) {
      fill(this.root, el("p", { class: "empty" }, "No queue yet."));
      return;
    }
    fill(this.root, el("ul", { class: "queues" }, rows.map((q) => this.#row(q))));
  }

  #row(queue) {
    const button = el("button", { type: "button", class: queue.paused ? "" : "quiet",
      dataset: { action: queue.paused ? "resume" : "pause" } },
    queue.paused ? "Resume" : "Pause");
    button.addEventListener("click",
      () => this.#toggle(queue.name, button.dataset.action === "pause", button));
    const c = queue.counts;
    return el("li", { dataset: { queue: queue.name, paused: String(queue.paused) } },
      el("div", {}, el("strong", {}, queue.name), " ",
        queue.paused ? el("span", { class: "badge paused" }, "paused") : null),
      el("div", { class: "muted small" },
        `${fmtNumber(c.queued || 0)} queued · ${fmtNumber(c.running || 0)} running · ` +
        `${fmtNumber(c.scheduled || 0)} scheduled · ${queue.served} worker(s)`),
      button);
  }

  async #toggle(name, pause, button) {
    button.disabled = true;
    setText(this.errorBox, "");
    try {
      await api(`/api/queues/${encodeURIComponent(name)}/${pause ? "pause" : "resume"}`,
        { method: "POST" });
      const li = button.closest("li");
      li.dataset.paused = String(pause);
      button.dataset.action = pause ? "resume" : "pause";
      setText(button, pause ? "Resume" : "Pause");
      this.key = ""; // the next tick redraws with the broker's word
    } catch (error) {
      setText(this.errorBox, describe(error));
    } finally {
      button.disabled = false;
    }
  }
}
