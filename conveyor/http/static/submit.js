// The submit form (POST /api/jobs): a task offered by the connected workers, a JSON payload
// checked here before anything is sent, priority 1-10, queue and delay. The status line
// follows the job until it ends and shows its result.

import { api, describe } from "./api.js";
import { el, fill, pretty, setText } from "./dom.js";

const FINAL = new Set(["completed", "dead", "cancelled"]);

/** The payload text as an object or array, or a message saying what is wrong. */
export function parsePayload(text) {
  const source = text.trim() || "{}";
  let value;
  try {
    value = JSON.parse(source);
  } catch (error) {
    return { error: `The payload is not valid JSON: ${error.message}` };
  }
  if (value === null || typeof value !== "object") {
    return { error: "The payload must be a JSON object (keyword arguments) or an array " +
      "(positional arguments)." };
  }
  return { value };
}

export class SubmitForm {
  constructor(form, onSubmitted, openJob) {
    this.form = form;
    this.task = form.querySelector("#submit-task");
    this.payload = form.querySelector("#submit-payload");
    this.error = form.querySelector("#submit-error");
    this.status = form.querySelector("#submit-status");
    this.onSubmitted = onSubmitted;
    this.openJob = openJob;
    this.tracking = null;
    this.tasks = [];
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
    this.payload.addEventListener("input", () => {
      const { error } = parsePayload(this.payload.value);
      this.payload.setAttribute("aria-invalid", String(Boolean(error)));
      if (!error && this.error.dataset.kind === "payload") setText(this.error, "");
    });
  }

  async loadTasks() {
    try {
      this.tasks = await api("/api/tasks");
    } catch {
      return;
    }
    const chosen = this.task.value;
    if (!this.tasks.length) {
      fill(this.task, el("option", { value: "" }, "no worker offers a task yet"));
      return;
    }
    fill(this.task, this.tasks.map((t) => el("option", { value: t.name }, t.name)));
    if (this.tasks.some((t) => t.name === chosen)) this.task.value = chosen;
  }

  #fail(message, kind, field) {
    this.error.dataset.kind = kind;
    setText(this.error, message);
    if (field) field.setAttribute("aria-invalid", "true");
  }

  async #submit() {
    setText(this.error, "");
    const parsed = parsePayload(this.payload.value);
    if (parsed.error) {
      this.#fail(parsed.error, "payload", this.payload);
      this.payload.focus();
      return;
    }
    const task = this.task.value;
    if (!task) return this.#fail("Pick a task (start a worker that offers one).", "task");
    const priority = Number(this.form.priority.value || 5);
    if (!Number.isInteger(priority) || priority < 1 || priority > 10) {
      return this.#fail("Priority must be a whole number from 1 to 10.", "priority",
        this.form.priority);
    }
    const delay = Number(this.form.delay.value || 0);
    if (!(delay >= 0)) return this.#fail("Delay must be 0 or more seconds.", "delay");
    const body = { task, payload: parsed.value, priority };
    const queue = this.form.queue.value.trim();
    if (queue) body.queue = queue;
    if (delay > 0) body.delay = delay;
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const made = await api("/api/jobs", { method: "POST", body });
      this.tracking = made.id;
      this.checked = false;
      this.#status(made.id, made.state, made.created ? "submitted" : "already there");
      this.onSubmitted(made);
    } catch (error) {
      this.#fail(describe(error), "server");
    } finally {
      button.disabled = false;
    }
  }

  #status(id, state, note, result) {
    this.status.dataset.state = state;
    this.status.dataset.jobId = id;
    fill(this.status, `Job `,
      el("button", { type: "button", class: "link mono", onclick: () => this.openJob(id) }, id),
      ` ${note}: ${state}`,
      result !== undefined ? el("span", { class: "result" }, ` → ${pretty(result)}`) : null);
  }

  async onTick(tick) {
    const id = this.tracking;
    if (!id || !tick.jobs) return;
    const change = tick.jobs.findLast((c) => c.id === id); // its newest change
    // the first tick after a submit may have come before its answer: ask once then, and
    // whenever this tick left changes out
    if (!change && !tick.more && this.checked) return;
    this.checked = true;
    if (change && !FINAL.has(change.state)) {
      this.#status(id, change.state, "is");
      return;
    }
    let job;
    try {
      job = await api(`/api/jobs/${encodeURIComponent(id)}`);
    } catch (error) {
      setText(this.error, describe(error));
      return;
    }
    if (this.tracking !== id) return;
    if (!FINAL.has(job.state)) {
      this.#status(id, job.state, "is");
      return;
    }
    this.tracking = null;
    const outcome = job.state === "completed" ? job.result
      : job.error ? `${job.error.type}: ${job.error.message}` : undefined;
    this.#status(id, job.state, "is", outcome);
  }
}
