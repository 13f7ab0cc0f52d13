// The workers panel: one row per connected worker, turning busy/idle live with its jobs.

import { ago, el, fill, setText, shortId } from "./dom.js";

const SHOWN = 3; // current jobs listed per worker (the rest as "+n")

export class Workers {
  constructor(root, openJob) {
    this.root = root;
    this.openJob = openJob;
    this.rows = new Map();
    this.body = el("tbody");
    this.empty = el("p", { class: "empty" }, "No worker is connected. Start one: conveyor worker");
    this.table = el("table", { class: "table workers" },
      el("thead", {}, el("tr", {}, ["Worker", "State", "Jobs now", "Done / failed"].map((h) => el("th", {}, h)))),
      this.body);
    fill(root, this.empty, this.table);
  }

  update(workers) {
    const seen = new Set();
    for (const worker of workers) {
      seen.add(worker.id);
      let row = this.rows.get(worker.id);
      if (!row) {
        row = this.#row(worker);
        this.rows.set(worker.id, row);
        this.body.append(row.tr);
      }
      this.#refresh(row, worker);
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    this.empty.hidden = workers.length > 0;
    this.table.hidden = workers.length === 0;
  }

  #row(worker) {
    const cells = {
      state: el("span", { class: "badge" }),
      jobs: el("td", { class: "jobs-now" }),
      done: el("td", { class: "num" }),
      heartbeat: el("span"),
    };
    const tr = el("tr", { dataset: { workerId: worker.id } },
      el("td", {}, el("strong", {}, worker.name),
        el("div", { class: "muted small" }, `${worker.host} · pid ${worker.pid ?? "?"} · ` +
          `${worker.pool} × ${worker.concurrency} · ${worker.queues.join(", ")} · heartbeat `,
        cells.heartbeat)),
      el("td", {}, cells.state), cells.jobs, cells.done);
    return { tr, cells, jobs: "" };
  }

  #refresh(row, worker) {
    const state = worker.stalled ? "stalled" : worker.draining ? "draining"
      : worker.busy > 0 ? "busy" : "idle";
    row.tr.dataset.state = state;
    row.cells.state.className = `badge worker-${state}`;
    setText(row.cells.state, state === "busy" ? `busy ${worker.busy}/${worker.concurrency}` : state);
    const jobs = worker.jobs.join(" ");
    if (jobs !== row.jobs) {
      row.jobs = jobs;
      fill(row.cells.jobs, worker.jobs.length ? worker.jobs.slice(0, SHOWN).map((id) =>
        el("button", { type: "button", class: "link", title: id, dataset: { jobId: id },
          onclick: () => this.openJob(id) }, shortId(id))) : el("span", { class: "muted" }, "–"),
      worker.jobs.length > SHOWN ? el("span", { class: "muted" }, `+${worker.jobs.length - SHOWN}`)
        : null);
    }
    setText(row.cells.done, `${worker.completed} / ${worker.failed}`);
    setText(row.cells.heartbeat, ago(worker.last_heartbeat));
  }
}
