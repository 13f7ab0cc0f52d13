// The stat cards: each one number of /api/stats (the same numbers, from each live tick).

import { el, fill, fmtNumber, setText } from "./dom.js";

const sum = (counts) => Object.values(counts).reduce((a, b) => a + b, 0);

// [key, label, value from the stats, what it counts]
const CARDS = [
  ["queued", "Queued", (s) => s.states.queued, "waiting for a worker"],
  ["scheduled", "Scheduled", (s) => s.states.scheduled, "delayed or backing off"],
  ["running", "Running", (s) => s.states.running, "on a worker now"],
  ["completed", "Completed", (s) => s.totals.completed, "finished runs"],
  ["failed", "Failed", (s) => s.totals.failed, "failed attempts"],
  ["requeued", "Requeued", (s) => s.requeued, "back after a lost worker"],
  ["dead", "Dead", (s) => s.states.dead, "in the dead-letter queue"],
  ["total", "Total", (s) => sum(s.states), "jobs in the store"],
  ["rate", "Jobs/s", (s) => s.jobs_per_second, "over the last minute"],
];

export class Cards {
  constructor(root) {
    this.root = root;
    this.values = new Map();
    const cards = CARDS.map(([key, label, , hint]) => {
      const value = el("span", { class: "value" }, "–");
      this.values.set(key, value);
      return el("div", { class: `card card-${key}`, dataset: { card: key } },
        el("span", { class: "label" }, label), value, el("span", { class: "hint" }, hint));
    });
    this.idle = el("span", { class: "value-part", dataset: { part: "idle" } }, "–");
    this.busy = el("span", { class: "value-part", dataset: { part: "busy" } }, "–");
    const workers = el("div", { class: "card card-workers", dataset: { card: "workers" } },
      el("span", { class: "label" }, "Workers"),
      el("span", { class: "value" }, this.idle, el("small", {}, " idle · "), this.busy,
        el("small", {}, " busy")),
      el("span", { class: "hint" }, "connected, by what they do now"));
    fill(root, cards.slice(0, 3), workers, cards.slice(3));
  }

  update(stats) {
    for (const [key, , value] of CARDS) {
      const node = this.values.get(key);
      const number = value(stats);
      node.parentElement.dataset.value = String(number);
      setText(node, key === "rate" ? number.toFixed(number < 10 ? 2 : 1) : fmtNumber(number));
    }
    const card = this.idle.closest(".card");
    card.dataset.idle = String(stats.workers.idle);
    card.dataset.busy = String(stats.workers.busy);
    setText(this.idle, fmtNumber(stats.workers.idle));
    setText(this.busy, fmtNumber(stats.workers.busy));
    card.classList.toggle("warn", stats.workers.total === 0);
  }
}
