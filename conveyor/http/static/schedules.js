// The schedules: each with its task, when it fires, its last and next run; pause, resume,
// run now and remove (a producer or admin token). Read again at every live tick: a
// schedule changes with time (its runs) and from other clients, and none of that is a job
// event the tick could name.

import { api, describe, serial } from "./api.js";
import { ago, el, fill, fmtTime, setText, shortId } from "./dom.js";

const COLUMNS = 9;

export class Schedules {
  constructor({ body, status, error }, openJob) {
    Object.assign(this, { body, status, error, openJob });
    this.key = "";
    this.load = serial(() => this.#fetch());
  }

  onTick() {
    this.load();
  }

  async #fetch() {
    let schedules;
    try {
      schedules = await api("/api/schedules");
    } catch (error) {
      setText(this.error, describe(error));
      return;
    }
    const key = JSON.stringify(schedules);
    if (key === this.key) return;
    this.key = key;
    this.#render(schedules);
  }

  #render(schedules) {
    if (!schedules.length) {
      fill(this.body, el("tr", {}, el("td", { colspan: COLUMNS, class: "empty" },
        "No schedule. Add one: conveyor schedule add NAME TASK --every 30s")));
      return;
    }
    fill(this.body, schedules.map((s) => this.#row(s)));
  }

  #row(s) {
    const when = s.cron !== null ? `cron ${s.cron}` : `every ${s.every} s`;
    const action = (label, path, props = {}) => el("button", { type: "button",
      dataset: { action: path }, onclick: (event) => this.#act(s.name, path, event.target),
      ...props }, label);
    return el("tr", { dataset: { schedule: s.name, paused: String(s.paused) } },
      el("td", { class: "mono" }, s.name, s.source === "code"
        ? el("span", { class: "muted small", title: "declared by a task (@task)" }, " (code)")
        : null),
      el("td", { class: "task" }, s.task),
      el("td", { class: "mono", title: s.when }, when),
      el("td", {}, s.tz),
      el("td", {}, s.queue ?? el("span", { class: "muted" }, "the task's")),
      el("td", { dataset: { cell: "state" } }, s.paused
        ? el("span", { class: "badge paused" }, "paused") : "active"),
      el("td", { title: s.last_run ? fmtTime(s.last_run) : "" },
        s.last_job ? el("button", { type: "button", class: "link mono", title: s.last_job,
          onclick: () => this.openJob(s.last_job) }, ago(s.last_run)) : "–"),
      el("td", { dataset: { cell: "next" } }, s.next_run ? fmtTime(s.next_run) : "–"),
      el("td", { class: "row-actions" },
        s.paused ? action("Resume", "resume") : action("Pause", "pause", { class: "quiet" }),
        action("Run now", "run"),
        action("Remove", "remove", { class: "danger" })));
  }

  async #act(name, what, button) {
    if (what === "remove" && !button.dataset.armed) {
      button.dataset.armed = "true"; // a second click removes it
      setText(button, "Really remove?");
      return;
    }
    setText(this.error, "");
    button.disabled = true;
    const path = `/api/schedules/${encodeURIComponent(name)}`;
    try {
      if (what === "remove") {
        await api(path, { method: "DELETE" });
        setText(this.status, `Schedule ${name} removed.`);
      } else if (what === "run") {
        const job = await api(`${path}/run`, { method: "POST" });
        setText(this.status, `Schedule ${name} ran now: job ${shortId(job.id)}.`);
      } else {
        await api(`${path}/${what}`, { method: "POST" });
        setText(this.status, `Schedule ${name} ${what === "pause" ? "paused" : "resumed"}.`);
      }
      this.key = ""; // redraw with the broker's word
      await this.load();
    } catch (error) {
      setText(this.error, describe(error));
      button.disabled = false;
    }
  }
}
