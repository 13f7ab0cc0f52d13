// The dead-letter queue (admin): dead jobs, paged; retry or purge one, or all.

import { api, ApiError, describe, serial } from "./api.js";
import { confirmButton, el, fill, fmtTime, keysetPager, setText, shortId } from "./dom.js";

const PAGE = 25;

export class DeadLetters {
  constructor({ body, retryAll, purgeAll, newer, older, page, status, error }, openJob, onChanged) {
    Object.assign(this, { body, newer, older, pageLabel: page, status, error, openJob,
      onChanged });
    this.cursors = [null];
    this.next = null;
    this.dead = null;
    this.allowed = true;
    this.load = serial(() => this.#fetch());
    confirmButton(retryAll, "Retry every dead job?", () => this.#act("retry all",
      () => api("/api/dlq/retry", { method: "POST", body: { all: true } })));
    confirmButton(purgeAll, "Delete every dead job for good?", () => this.#act("purged",
      () => api("/api/dlq", { method: "DELETE", query: { all: "true" } })));
    keysetPager(this, older, newer);
  }

  async #fetch() {
    if (!this.allowed) return;
    const cursor = this.cursors[this.cursors.length - 1];
    try {
      const page = await api("/api/dlq", { query: { cursor, limit: PAGE } });
      setText(this.error, "");
      this.next = page.next_cursor;
      this.#render(page.jobs);
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        this.allowed = false;
        fill(this.body);
        setText(this.error, "The dead-letter queue needs an admin token.");
      } else {
        setText(this.error, describe(error));
      }
    }
    this.older.disabled = !this.next;
    this.newer.disabled = this.cursors.length < 2;
    setText(this.pageLabel, `page ${this.cursors.length}`);
  }

  /** A tick: reload when the number of dead jobs moved, or a job died or left the DLQ
   * since the last one (the number alone misses a retry and a death in one second). */
  onTick(stats, tick) {
    const dead = stats.states.dead;
    const moved = tick && (tick.more > 0 || tick.jobs.some((c) => c.state === "dead"
      || c.from === "dead"));
    if (dead !== this.dead || moved) {
      this.dead = dead;
      this.load();
    }
  }

  #render(jobs) {
    if (!jobs.length) {
      fill(this.body, el("tr", {}, el("td", { colspan: 7, class: "empty" },
        "No dead jobs. Jobs land here when their retries run out.")));
      return;
    }
    fill(this.body, jobs.map((job) => el("tr", { dataset: { jobId: job.id } },
      el("td", {}, el("button", { type: "button", class: "link mono", title: job.id,
        onclick: () => this.openJob(job.id) }, shortId(job.id))),
      el("td", { class: "task" }, job.task),
      el("td", {}, job.queue),
      el("td", { class: "num" }, job.attempts),
      el("td", { class: "error-text" }, `${job.error_type ?? "Error"}: ${job.error_message ?? ""}`),
      el("td", { class: "muted" }, fmtTime(job.finished_at)),
      el("td", { class: "row-actions" },
        el("button", { type: "button", dataset: { action: "retry" },
          onclick: () => this.#act("retried", () => api("/api/dlq/retry",
            { method: "POST", body: { ids: [job.id] } })) }, "Retry"),
        el("button", { type: "button", class: "danger", dataset: { action: "purge" },
          onclick: () => this.#act("purged", () => api("/api/dlq",
            { method: "DELETE", query: { id: job.id } })) }, "Purge")))));
  }

  async #act(what, call) {
    setText(this.error, "");
    try {
      const { count } = await call();
      setText(this.status, `${count} job${count === 1 ? "" : "s"} ${what === "retry all"
        ? "retried" : what}.`);
      this.cursors = [null];
      await this.load();
      this.onChanged();
    } catch (error) {
      setText(this.error, describe(error));
    }
  }
}
