// DOM helpers. Everything the page shows is built here with createElement and text nodes:
// task names, arguments, results and errors come from users, so no string is ever parsed
// as HTML anywhere in the dashboard (tests/http/test_static.py checks the sinks).

/** `el("td", {class: "x", dataset: {id}}, child, "text")`: an element; strings become text. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // a string is a text node
  }
}

/** Replace a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value;
}

const number = new Intl.NumberFormat("en");

export function fmtNumber(n) {
  return n === null || n === undefined ? "–" : number.format(n);
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms`;
  if (s < 120) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function fmtTime(epoch) {
  if (!epoch) return "–";
  const d = new Date(epoch * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function ago(epoch) {
  if (!epoch) return "–";
  return `${fmtSeconds(Math.max(0, Date.now() / 1000 - epoch))} ago`;
}

/** A short form of a long id (the full id stays in the title). */
export function shortId(id) {
  return id.length > 14 ? `${id.slice(0, 8)}…${id.slice(-4)}` : id;
}

export function stateBadge(state) {
  return el("span", { class: `badge state state-${state}`, dataset: { state } }, state);
}

export function priorityBadge(priority) {
  const level = priority <= 2 ? "high" : priority >= 8 ? "low" : "normal";
  return el("span", { class: `badge prio prio-${level}`, title: "1 = most urgent" }, `P${priority}`);
}

/** JSON for people: indented, and a string shown as it is. */
export function pretty(value) {
  if (value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** A button that asks once more before it acts ("Purge all" → "Really purge?"). */
export function confirmButton(button, question, action) {
  let armed = null;
  const label = button.textContent;
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = question;
      button.dataset.armed = "true";
      armed = setTimeout(() => disarm(), 5000);
      return;
    }
    disarm();
    await action();
  });
  function disarm() {
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    delete button.dataset.armed;
  }
}

/** Wire "older"/"newer" buttons to a keyset-paged view: ``view.cursors`` is the stack of
 * page cursors, ``view.next`` the cursor of the page after this one, ``view.load()``
 * shows the page on top. Both buttons stay off until that page is shown, so a double
 * click moves one page. */
export function keysetPager(view, older, newer) {
  older.addEventListener("click", () => {
    if (!view.next) return;
    view.cursors.push(view.next);
    view.next = null;
    older.disabled = newer.disabled = true;
    view.load();
  });
  newer.addEventListener("click", () => {
    if (view.cursors.length < 2) return;
    view.cursors.pop();
    older.disabled = newer.disabled = true;
    view.load();
  });
}
