// The rate and concurrency limits in force (set on the broker, or declared by a task) and
// what each holds back now, from every live tick's stats; set or clear a limit (admin).

import { api, describe } from "./api.js";
import { el, fill, fmtNumber, setText } from "./dom.js";

export class Limits {
  constructor({ rates, concurrency, keys, form, error, status }) {
    Object.assign(this, { rates, concurrency, keys, form, error, status });
    this.key = "";
    this.set = {};
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#submit();
    });
  }

  /** From a tick (or the first numbers): ``stats.limits``. */
  update(stats) {
    const limits = stats.limits;
    const key = JSON.stringify(limits, (k, v) => (k === "tokens" ? undefined : v));
    if (key === this.key) return;
    this.key = key;
    this.set = limits.set;
    this.#rates(limits.rates);
    this.#concurrency(limits.concurrency);
    this.#keys(limits.running_by_key, limits.waiting_for_key);
  }

  #rates(rates) {
    if (!rates.length) {
      fill(this.rates, this.#empty(7, "No rate limit. Set one below (task:NAME or queue:NAME)."));
      return;
    }
    fill(this.rates, rates.map((r) => el("tr", { dataset: { target: r.target,
      limited: String(r.limited) } },
    el("td", { class: "mono" }, r.target),
    el("td", {}, r.rate),
    el("td", { class: "muted" }, r.source),
    el("td", {}, r.limited ? el("span", { class: "badge paused" }, "limited") : "has tokens"),
    el("td", { class: "num", dataset: { cell: "queued" } }, fmtNumber(r.queued)),
    el("td", { class: "num" }, fmtNumber(r.dispatched)),
    el("td", { class: "row-actions" }, this.#clear(r.target)))));
  }

  #concurrency(limits) {
    if (!limits.length) {
      fill(this.concurrency, this.#empty(6, "No concurrency limit. Set one below (key:PREFIX)."));
      return;
    }
    fill(this.concurrency, limits.map((c) => el("tr", { dataset: { target: c.target } },
      el("td", { class: "mono" }, c.target),
      el("td", { class: "num" }, c.limit),
      el("td", { class: "muted" }, c.source),
      el("td", { class: "num", dataset: { cell: "running" } }, fmtNumber(c.running)),
      el("td", { class: "num", dataset: { cell: "waiting" } }, fmtNumber(c.waiting)),
      el("td", { class: "row-actions" }, this.#clear(c.target)))));
  }

  #keys(running, waiting) {
    const names = [...new Set([...Object.keys(running), ...Object.keys(waiting)])].sort();
    if (!names.length) {
      fill(this.keys);
      return;
    }
    fill(this.keys, el("p", { class: "muted small" }, "By key: ",
      names.map((k, i) => el("span", { dataset: { key: k } }, i ? " · " : "",
        el("span", { class: "mono" }, k),
        ` ${fmtNumber(running[k] || 0)} running, ${fmtNumber(waiting[k] || 0)} waiting`))));
  }

  #empty(span, text) {
    return el("tr", {}, el("td", { colspan: span, class: "empty" }, text));
  }

  /** A clear button for a limit set on the broker (a task's own cannot be cleared here). */
  #clear(target) {
    if (!(target in this.set)) return null;
    return el("button", { type: "button", class: "quiet", dataset: { action: "clear" },
      onclick: (event) => this.#send(target, null, event.target) }, "Clear");
  }

  async #submit() {
    const target = this.form.elements.target.value.trim();
    const raw = this.form.elements.value.value.trim();
    if (!target) return this.#fail("target: give task:NAME, queue:NAME or key:PREFIX");
    if (!raw) return this.#fail("value: give a rate (10/s) or, for key:, a count");
    const value = target.startsWith("key:") && /^-?[0-9]+$/.test(raw) ? Number(raw) : raw;
    await this.#send(target, value, this.form.querySelector("button[type=submit]"));
  }

  #fail(message) {
    setText(this.status, "");
    setText(this.error, message);
  }

  async #send(target, value, button) {
    setText(this.error, "");
    setText(this.status, "");
    button.disabled = true;
    const path = `/api/limits/${encodeURIComponent(target)}`;
    try {
      const limits = value === null ? await api(path, { method: "DELETE" })
        : await api(path, { method: "PUT", body: { value } });
      setText(this.status, value === null ? `Limit ${target} cleared.`
        : `Limit ${target} set to ${value}.`);
      this.key = "";
      this.update({ limits });
      if (value !== null) this.form.reset();
    } catch (error) {
      setText(this.error, describe(error));
    } finally {
      button.disabled = false;
    }
  }
}
