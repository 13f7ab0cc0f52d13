// The job table: filters, id-prefix search and server-side keyset paging (GET /api/jobs).
// Only one page is ever in the page; live ticks refresh the first page, or the states of
// the rows shown on an older one.

import { api, describe, serial } from "./api.js";
import {
  el,
  fill,
  fmtTime,
  keysetPager,
  priorityBadge,
  setText,
  shortId,
  stateBadge,
} from "./dom.js";

export const PAGE = 50;

export class JobTable {
  constructor({ form, body, newer, older, page, error }, openJob) {
    Object.assign(this, { form, body, newer, older, pageLabel: page, error, openJob });
    this.cursors = [null]; // the cursor of each page shown so far: back is a pop
    this.next = null;
    this.load = serial(() => this.#fetch());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.cursors = [null];
      this.load();
    });
    form.addEventListener("change", (event) => {
      if (event.target.tagName === "SELECT") form.requestSubmit();
    });
    keysetPager(this, older, newer);
  }

  filters() {
    const data = Object.fromEntries(new FormData(this.form));
    for (const key of Object.keys(data)) data[key] = String(data[key]).trim();
    return data;
  }

  async #fetch() {
    const cursor = this.cursors[this.cursors.length - 1];
    this.body.closest("table").setAttribute("aria-busy", "true");
    try {
      const page = await api("/api/jobs", { query: { ...this.filters(), cursor, limit: PAGE } });
      setText(this.error, "");
      this.next = page.next_cursor;
      this.#render(page.jobs);
    } catch (error) {
      setText(this.error, describe(error));
    } finally {
      this.body.closest("table").setAttribute("aria-busy", "false");
      this.older.disabled = !this.next;
      this.newer.disabled = this.cursors.length < 2;
      setText(this.pageLabel, `page ${this.cursors.length}`);
    }
  }

  #render(jobs) {
    if (!jobs.length) {
      fill(this.body, el("tr", {}, el("td", { colspan: 9, class: "empty" }, "No jobs match.")));
      return;
    }
    fill(this.body, jobs.map((job) => el("tr", { dataset: { jobId: job.id, state: job.state } },
      el("td", {}, el("button", { type: "button", class: "link mono", title: job.id,
        onclick: () => this.openJob(job.id) }, shortId(job.id))),
      el("td", { class: "task" }, job.task),
      el("td", {}, job.queue),
      el("td", {}, priorityBadge(job.priority)),
      el("td", { class: "state-cell" }, stateBadge(job.state)),
      el("td", { class: "num" }, `${job.attempts}/${job.max_retries + 1}`),
      el("td", { class: "muted" }, job.worker ?? "–"),
      el("td", { class: "muted" }, fmtTime(job.created_at)),
      el("td", { class: "error-text" }, job.error_message
        ? `${job.error_type ?? "Error"}: ${job.error_message}` : ""))));
  }

  /** A tick: the first page reloads when anything changed; an older page updates states. */
  onTick(tick) {
    if (!tick.jobs || (tick.jobs.length === 0 && !tick.more)) return;
    if (this.cursors.length === 1) {
      this.load();
      return;
    }
    for (const change of tick.jobs) {
      const row = this.body.querySelector(`tr[data-job-id="${CSS.escape(change.id)}"]`);
      if (row && row.dataset.state !== change.state) {
        row.dataset.state = change.state;
        fill(row.querySelector(".state-cell"), stateBadge(change.state));
      }
    }
  }
}
