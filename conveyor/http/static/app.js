// The dashboard's entry point: the token for this tab, the first load, and the live feed
// that keeps every panel current without a reload.

import { api, ApiError, authEvents, describe, token } from "./api.js";
import { Cards } from "./cards.js";
import { Charts } from "./charts.js";
import { DeadLetters } from "./dlq.js";
import { Detail } from "./detail.js";
import { $, setText } from "./dom.js";
import { JobTable } from "./jobs.js";
import { Limits } from "./limits.js";
import { LiveFeed } from "./live.js";
import { Queues } from "./queues.js";
import { Schedules } from "./schedules.js";
import { showSecurity } from "./security.js";
import { SubmitForm } from "./submit.js";
import { Workers } from "./workers.js";
import { Workflows } from "./workflows.js";

const CONNECTION = {
  idle: "not connected", connecting: "connecting…", live: "live",
  reconnecting: "reconnecting…", refused: "token refused",
};

let feed = null;
let panels = null;

function showLogin(message = "") {
  feed?.stop();
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  setText($("#login-error"), message);
  $("#token-input").value = "";
  $("#token-input").focus();
}

/** Whether the broker takes this token for reading; a message for a person if not. */
async function check(value) {
  try {
    await api("/api/stats", { tokenValue: value });
    return null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      return `The broker refused this token (${error.message}). Check it, or make one with ` +
        "conveyor token create --role admin.";
    }
    if (error instanceof ApiError && error.status === 403) {
      return `This token may not read the dashboard (${error.message}): use a producer or ` +
        "admin token.";
    }
    return `Cannot check the token: ${describe(error)}`;
  }
}

function build() {
  const openJob = (id) => panels.detail.open(id);
  const refreshLists = () => {
    panels.jobs.load();
    panels.dlq.load();
  };
  panels = {
    cards: new Cards($("#overview")),
    charts: new Charts({
      throughput: $("#chart-throughput"), depth: $("#chart-depth"),
      states: $("#chart-states"), tasks: $("#chart-tasks"), times: $("#chart-times"),
      timesText: $("#times-text"),
    }),
    workers: new Workers($("#workers"), openJob),
    queues: new Queues($("#queues"), $("#queues-error")),
    jobs: new JobTable({
      form: $("#job-filters"), body: $("#job-table tbody"), newer: $("#jobs-newer"),
      older: $("#jobs-older"), page: $("#jobs-page"), error: $("#jobs-error"),
    }, openJob),
    dlq: new DeadLetters({
      body: $("#dlq-table tbody"), retryAll: $("#dlq-retry-all"), purgeAll: $("#dlq-purge-all"),
      newer: $("#dlq-newer"), older: $("#dlq-older"), page: $("#dlq-page"),
      status: $("#dlq-status"), error: $("#dlq-error"),
    }, openJob, () => panels.jobs.load()),
    detail: new Detail($("#detail"), refreshLists),
    workflows: new Workflows({
      body: $("#workflow-table tbody"), members: $("#workflow-members tbody"),
      title: $("#workflow-title"), newer: $("#workflows-newer"), older: $("#workflows-older"),
      page: $("#workflows-page"), error: $("#workflows-error"),
    }, openJob),
    schedules: new Schedules({
      body: $("#schedule-table tbody"), status: $("#schedules-status"),
      error: $("#schedules-error"),
    }, openJob),
    limits: new Limits({
      rates: $("#rate-table tbody"), concurrency: $("#concurrency-table tbody"),
      keys: $("#limit-keys"), form: $("#limit-form"), error: $("#limits-error"),
      status: $("#limits-status"),
    }),
    submit: null,
  };
  panels.submit = new SubmitForm($("#submit-form"), () => panels.jobs.load(), openJob);
}

function onNumbers(message, isTick) {
  const { stats, workers, point } = message;
  panels.cards.update(stats);
  panels.charts.update(point, stats);
  panels.workers.update(workers);
  panels.queues.update(stats, workers);
  panels.limits.update(stats);
  panels.dlq.onTick(stats, isTick ? message : null);
  const banner = $("#banner");
  banner.hidden = stats.store.writable;
  if (!stats.store.writable) setText(banner, `The store cannot write: ${stats.store.error}`);
  if (isTick) {
    panels.jobs.onTick(message);
    panels.detail.onTick(message);
    panels.submit.onTick(message);
    panels.workflows.onTick(message);
    panels.schedules.onTick();
    if (message.joined.length || message.left.length) panels.submit.loadTasks();
  }
  document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
}

async function open() {
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  // ask first: the answers travel while the panels and charts are being built
  const security = api("/api/security");
  const history = api("/api/history", { query: { seconds: 300 } });
  security.catch(() => {});
  history.catch(() => {});
  if (!panels) build();
  if (!feed) {
    feed = new LiveFeed();
    feed.addEventListener("state", (event) => {
      const conn = $("#conn");
      conn.dataset.state = event.detail;
      setText(conn, CONNECTION[event.detail] ?? event.detail);
    });
    feed.addEventListener("hello", (event) => onNumbers(event.detail, false));
    feed.addEventListener("tick", (event) => onNumbers(event.detail, true));
    feed.addEventListener("refused", () => {
      token.clear();
      showLogin("The broker no longer accepts this token (revoked or expired). Give another.");
    });
  }
  feed.start();
  panels.submit.loadTasks();
  panels.jobs.load();
  panels.dlq.load();
  panels.workflows.load();
  panels.schedules.load();
  try {
    panels.charts.history(await history);
  } catch {
    // the charts fill from the live ticks instead
  }
  try {
    showSecurity(await security, $("#tls-badge"), $("#security"));
  } catch (error) {
    setText($("#security"), describe(error));
  }
}

async function main() {
  authEvents.addEventListener("unauthorized", () => {
    token.clear();
    showLogin("The broker no longer accepts this token (revoked or expired). Give another.");
  });
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = $("#token-input").value.trim();
    if (!value) return;
    const button = $("#login-form button");
    button.disabled = true;
    setText($("#login-error"), "");
    const problem = await check(value);
    button.disabled = false;
    if (problem) {
      setText($("#login-error"), problem);
      return;
    }
    token.set(value);
    open();
  });
  $("#logout").addEventListener("click", () => {
    token.clear();
    showLogin();
  });
  const saved = token.get();
  if (!saved) return showLogin();
  const problem = await check(saved);
  if (problem) {
    token.clear();
    return showLogin(problem);
  }
  open();
}

main();
