// The live feed: GET /api/events (Server-Sent Events) read with fetch, so the token goes in
// the Authorization header rather than the URL. One message a second; when the stream
// ends, fails or falls silent, it reconnects with backoff and says so.

import { authHeaders } from "./api.js";

const SILENCE = 5000; // ms without a message: the stream is stuck, start again
const MAX_BACKOFF = 10000;

export class LiveFeed extends EventTarget {
  constructor(path = "/api/events") {
    super();
    this.path = path;
    this.state = "idle";
    this.stopped = true;
    this.controller = null;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.#run();
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
    this.#setState("idle");
  }

  async #run() {
    let backoff = 500;
    let connected = false;
    while (!this.stopped) {
      this.#setState(connected ? "reconnecting" : "connecting");
      this.controller = new AbortController();
      try {
        const response = await fetch(this.path, {
          headers: { ...authHeaders(), Accept: "text/event-stream" },
          credentials: "omit",
          cache: "no-store",
          signal: this.controller.signal,
        });
        if (response.status === 401 || response.status === 403) {
          this.#setState("refused");
          this.dispatchEvent(new CustomEvent("refused", { detail: response.status }));
          this.stopped = true;
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        connected = true;
        backoff = 500;
        await this.#read(response.body);
      } catch {
        // a dropped or refused connection: try again below
      }
      if (this.stopped) return;
      this.#setState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, backoff * (0.5 + Math.random())));
      backoff = Math.min(backoff * 2, MAX_BACKOFF);
    }
  }

  async #read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let watchdog = setTimeout(() => this.controller.abort(), SILENCE);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          clearTimeout(watchdog);
          watchdog = setTimeout(() => this.controller.abort(), SILENCE);
          this.#message(block);
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  }

  #message(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) kind = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    }
    if (!data.length) return;
    let payload;
    try {
      payload = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    if (this.state !== "live") this.#setState("live");
    this.dispatchEvent(new CustomEvent(kind, { detail: payload }));
  }

  #setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}
