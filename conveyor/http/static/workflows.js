// Workflows (chain, group, chord): the recent ones, each as one thing (its kind, summary
// state and jobs by state), paged; a click shows its jobs with their states. Both are read
// again when a tick says jobs changed (a workflow changes only when one of its jobs does).

import { api, describe, serial } from "./api.js";
import { el, fill, fmtTime, keysetPager, setText, shortId, stateBadge } from "./dom.js";

const PAGE = 20;
const ORDER = ["waiting", "scheduled", "queued", "running", "completed", "dead", "cancelled"];

export class Workflows {
  constructor({ body, members, title, newer, older, page, error }, openJob) {
    Object.assign(this, { body, members, title, newer, older, pageLabel: page, error,
      openJob });
    this.cursors = [null];
    this.next = null;
    this.openId = null;
    this.load = serial(() => this.#fetch());
    this.loadMembers = serial(() => this.#fetchMembers());
    keysetPager(this, older, newer);
  }

  onTick(tick) {
    if (!tick.jobs.length && !tick.more) return;
    this.load();
    if (this.openId) this.loadMembers();
  }

  open(id) {
    this.openId = id;
    for (const tr of this.body.querySelectorAll("tr[data-workflow]")) {
      tr.dataset.open = String(tr.dataset.workflow === id);
    }
    this.loadMembers();
  }

  async #fetch() {
    const cursor = this.cursors[this.cursors.length - 1];
    try {
      const page = await api("/api/workflows", { query: { cursor, limit: PAGE } });
      setText(this.error, "");
      this.next = page.next_cursor;
      this.#render(page.workflows);
    } catch (error) {
      setText(this.error, describe(error));
    }
    this.older.disabled = !this.next;
    this.newer.disabled = this.cursors.length < 2;
    setText(this.pageLabel, `page ${this.cursors.length}`);
  }

  #render(workflows) {
    if (!workflows.length) {
      fill(this.body, el("tr", {}, el("td", { colspan: 6, class: "empty" },
        "No workflow yet. client.submit_workflow(chain(...)) makes one.")));
      return;
    }
    fill(this.body, workflows.map((w) => el("tr", {
      dataset: { workflow: w.id, state: w.state, open: String(w.id === this.openId) } },
    el("td", {}, el("button", { type: "button", class: "link mono", title: w.id,
      onclick: () => this.open(w.id) }, shortId(w.id))),
    el("td", {}, w.kind),
    el("td", {}, stateBadge(w.state)),
    el("td", { class: "num" }, w.members),
    el("td", { class: "muted small" }, counts(w.counts)),
    el("td", { class: "muted" }, fmtTime(w.created_at)))));
  }

  async #fetchMembers() {
    const id = this.openId;
    let flow;
    try {
      flow = await api(`/api/workflows/${encodeURIComponent(id)}`);
    } catch (error) {
      setText(this.error, describe(error));
      return;
    }
    if (id !== this.openId) return; // another was opened meanwhile
    fill(this.title, `${flow.kind} `, el("span", { class: "mono", title: flow.id },
      shortId(flow.id)), " ", stateBadge(flow.state),
    el("span", { class: "muted small" }, ` ${flow.jobs.length} job(s)`,
      flow.truncated ? " (the first ones)" : ""));
    this.members.dataset.workflow = flow.id;
    fill(this.members, flow.jobs.map((job, i) => el("tr", {
      dataset: { jobId: job.id, state: job.state } },
    el("td", { class: "num muted" }, i + 1),
    el("td", {}, el("button", { type: "button", class: "link mono", title: job.id,
      onclick: () => this.openJob(job.id) }, shortId(job.id))),
    el("td", { class: "task" }, job.task),
    el("td", {}, stateBadge(job.state), job.state === "running" && typeof job.progress?.value
      === "number" ? el("span", { class: "muted small" }, ` ${Math.round(job.progress.value * 100)}%`)
      : null),
    el("td", { class: "muted small" },
      job.depends_on.length ? `after ${job.depends_on.map(shortId).join(", ")}` : "first"),
    el("td", { class: "error-text" }, job.error_type ?? ""))));
  }
}

/** "2 completed · 1 queued", in the order of a job's life. */
function counts(byState) {
  return ORDER.filter((s) => byState[s]).map((s) => `${byState[s]} ${s}`).join(" · ");
}
