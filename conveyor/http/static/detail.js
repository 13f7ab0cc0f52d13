// A job's detail (GET /api/jobs/{id}): arguments, result, error, each attempt with its
// traceback, the event history; cancel and retry. Sealed payloads arrive as "(encrypted)".

import { api, describe, serial } from "./api.js";
import { el, fill, fmtSeconds, fmtTime, pretty, priorityBadge, setText, stateBadge }
  from "./dom.js";

const CANCELLABLE = new Set(["waiting", "queued", "scheduled", "running"]);

export class Detail {
  constructor(dialog, onChanged) {
    this.dialog = dialog;
    this.body = dialog.querySelector("#detail-body");
    this.title = dialog.querySelector("#detail-title");
    this.onChanged = onChanged;
    this.id = null;
    this.refresh = serial(() => this.#load());
    dialog.querySelector("#detail-close").addEventListener("click", () => this.close());
    dialog.addEventListener("close", () => { this.id = null; });
    dialog.addEventListener("click", (event) => {
      if (event.target !== dialog) return;
      const box = dialog.getBoundingClientRect(); // the backdrop, not the dialog's padding
      const inside = event.clientX >= box.left && event.clientX <= box.right
        && event.clientY >= box.top && event.clientY <= box.bottom;
      if (!inside) this.close();
    });
  }

  async open(id) {
    this.id = id;
    setText(this.title, `Job ${id}`);
    fill(this.body, el("p", { class: "muted" }, "Loading…"));
    if (!this.dialog.open) this.dialog.showModal();
    await this.refresh();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
    this.id = null;
  }

  async #load() {
    const id = this.id;
    if (!id) return;
    try {
      const job = await api(`/api/jobs/${encodeURIComponent(id)}`);
      if (this.id === id) this.#render(job);
    } catch (error) {
      if (this.id === id) fill(this.body, el("p", { class: "error", role: "alert" }, describe(error)));
    }
  }

  onTick(tick) {
    if (!this.id || !tick.jobs) return;
    // a busy tick carries only the last changes: then look again anyway
    if (tick.more > 0 || tick.jobs.some((change) => change.id === this.id)
      || (tick.progress ?? []).some((report) => report.id === this.id)) this.refresh();
  }

  #render(job) {
    this.dialog.dataset.state = job.state;
    const actions = el("div", { class: "actions" });
    const message = el("p", { class: "error", role: "alert" });
    if (CANCELLABLE.has(job.state) && !job.cancel_requested) {
      actions.append(this.#action("Cancel job", "cancel", job, message, "danger"));
    }
    if (job.state === "dead") actions.append(this.#action("Retry", "retry", job, message));
    const facts = [
      ["State", stateBadge(job.state)],
      ["Task", job.task],
      ["Queue", job.queue],
      ["Priority", priorityBadge(job.priority)],
      ["Attempts", `${job.attempts} of ${job.max_retries + 1}`],
      ["Worker", job.worker ?? "–"],
      ["Created", fmtTime(job.created_at)],
      ["Started", fmtTime(job.started_at)],
      ["Finished", fmtTime(job.finished_at)],
      job.eta && job.state === "scheduled" ? ["Runs at", fmtTime(job.eta)] : null,
      job.timeout ? ["Timeout", fmtSeconds(job.timeout)] : null,
      job.unique_key ? ["Unique key", job.unique_key] : null,
      job.cancel_requested ? ["Cancel", "requested: stops when the run ends"] : null,
      job.waiting ? ["Waiting", job.waiting] : null,
      job.workflow ? ["Workflow", job.workflow] : null,
      job.depends_on?.length ? ["After", job.depends_on.join(", ")] : null,
    ].filter(Boolean);
    const payload = job.encrypted ? "(encrypted)"
      : pretty(job.args.length && Object.keys(job.kwargs).length
        ? { args: job.args, kwargs: job.kwargs }
        : job.args.length ? job.args : job.kwargs);
    fill(this.body,
      actions, message,
      el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
      job.progress ? this.#progress(job.progress) : null,
      job.workflow ? this.#workflow(job) : null,
      el("h3", {}, "Payload"), el("pre", { class: "code", dataset: { field: "payload" } }, payload),
      job.state === "completed" || job.result !== null
        ? [el("h3", {}, "Result"), el("pre", { class: "code", dataset: { field: "result" } },
          pretty(job.result))] : null,
      job.error ? [el("h3", {}, "Error"),
        el("pre", { class: "code error-text", dataset: { field: "error" } },
          `${job.error.type ?? "Error"}: ${job.error.message ?? ""}`),
        job.error.traceback ? el("details", {}, el("summary", {}, "Traceback"),
          el("pre", { class: "code" }, job.error.traceback)) : null] : null,
      el("h3", {}, "Attempts"), this.#attempts(job.attempts_detail),
      el("h3", {}, "Timeline"), this.#timeline(job.events));
  }

  // the workflow it belongs to, as one thing: its jobs in order, each one click away
  #workflow(job) {
    const box = el("div", { class: "workflow", dataset: { field: "workflow" } },
      el("p", { class: "muted" }, "Loading…"));
    api(`/api/workflows/${encodeURIComponent(job.workflow)}`).then((flow) => {
      if (this.id !== job.id) return;
      fill(box,
        el("p", { dataset: { field: "workflow-state" } },
          `${flow.state}: ${flow.jobs.length} job(s)`),
        el("ol", { class: "members" }, flow.jobs.map((member) => el("li",
          { dataset: { jobId: member.id, state: member.state } },
          member.id === job.id ? el("strong", {}, member.task)
            : el("button", { type: "button", class: "link", onclick: () => this.open(member.id) },
              member.task),
          " ", stateBadge(member.state)))));
    }).catch((error) => fill(box, el("p", { class: "error" }, describe(error))));
    return [el("h3", {}, "Workflow"), box];
  }

  // what the task last said of itself (current_job().progress / set_meta): text only
  #progress(report) {
    const bar = el("progress", { max: "1", dataset: { field: "progress-bar" } });
    if (report.value !== null && report.value !== undefined) bar.value = report.value;
    const percent = report.value === null || report.value === undefined ? ""
      : `${Math.round(report.value * 100)}% `;
    const meta = report.meta && Object.keys(report.meta).length
      ? el("pre", { class: "code", dataset: { field: "meta" } }, pretty(report.meta)) : null;
    return [el("h3", {}, "Progress"),
      el("p", { dataset: { field: "progress" } }, bar, " ",
        `${percent}${report.message ?? ""}`.trim()),
      meta];
  }

  #action(label, verb, job, message, style = "") {
    return el("button", { type: "button", class: style, dataset: { action: verb },
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          const updated = await api(`/api/jobs/${encodeURIComponent(job.id)}/${verb}`,
            { method: "POST" });
          this.#render(updated);
          this.onChanged();
        } catch (error) {
          setText(message, describe(error));
          event.target.disabled = false;
        }
      } }, label);
  }

  #attempts(runs) {
    if (!runs.length) return el("p", { class: "muted" }, "Not run yet.");
    return el("ol", { class: "attempts" }, runs.map((run) => el("li",
      { dataset: { outcome: run.outcome } },
      el("div", {}, el("strong", {}, `#${run.attempt} ${run.outcome}`),
        ` on ${run.worker ?? "?"}, ${fmtTime(run.started)}`,
        run.ended ? ` (${fmtSeconds(run.ended - run.started)})` : ""),
      run.error ? el("pre", { class: "code error-text" }, run.error) : null,
      run.reason ? el("div", { class: "muted" }, run.reason) : null,
      run.traceback ? el("details", {}, el("summary", {}, "Traceback"),
        el("pre", { class: "code" }, run.traceback)) : null)));
  }

  #timeline(events) {
    return el("ol", { class: "timeline" }, events.map((ev) => el("li",
      { dataset: { event: ev.event } },
      el("time", {}, fmtTime(ev.at)), " ", el("strong", {}, ev.event),
      ev.worker ? ` · ${ev.worker}` : "",
      ev.attempt ? ` · attempt ${ev.attempt}` : "",
      ev.reason ? ` · ${ev.reason}` : "",
      ev.error ? el("div", { class: "error-text" }, ev.error) : null)));
  }
}
