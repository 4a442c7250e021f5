// initialize() against a stand-in page (EventTarget document/window) and a recording model.
import assert from "node:assert/strict";
import { beforeEach, mock, test } from "node:test";

import widget from "../widget.js";

class FakeModel {
  constructor(/** @type {Record<string, any>} */ values = {}) {
    this.values = values;
    /** @type {any[]} */
    this.sent = [];
    /** @type {Map<string, Set<Function>>} */
    this.handlers = new Map();
    this.failSends = false;
  }
  get(/** @type {string} */ key) {
    return this.values[key];
  }
  send(/** @type {any} */ msg) {
    if (this.failSends) throw new Error("comm closed");
    this.sent.push(structuredClone(msg));
  }
  on(/** @type {string} */ event, /** @type {Function} */ fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)?.add(fn);
  }
  off(/** @type {string} */ event, /** @type {Function} */ fn) {
    this.handlers.get(event)?.delete(fn);
  }
  custom(/** @type {any} */ msg) {
    for (const fn of this.handlers.get("msg:custom") ?? []) fn(msg, []);
  }
  get kinds() {
    return this.sent.map((m) => `${m.kind}:${m.visible}`);
  }
}

/** @type {any} */
let doc;

beforeEach((t) => {
  doc = Object.assign(new EventTarget(), { visibilityState: "visible" });
  globalThis.document = doc;
  globalThis.window = /** @type {any} */ (new EventTarget());
  mock.timers.enable({ apis: ["setTimeout"] });
  t.after(() => mock.timers.reset());
});

const setVisibility = (/** @type {string} */ state) => {
  doc.visibilityState = state;
  doc.dispatchEvent(new Event("visibilitychange"));
};

test("reports the initial state, then every visibility change, numbered per page", () => {
  const model = new FakeModel();
  widget.initialize({ model });
  setVisibility("hidden");
  setVisibility("visible");
  assert.deepEqual(model.kinds, ["transition:true", "transition:false", "transition:true"]);
  assert.deepEqual(model.sent.map((m) => m.seq), [1, 2, 3]);
  const [first] = model.sent;
  assert.equal(first.type, "report");
  assert.ok(model.sent.every((m) => m.page === first.page && typeof m.t === "number"));
  assert.ok(model.sent[2].t >= model.sent[0].t);
});

test("a page that starts hidden says so", () => {
  doc.visibilityState = "hidden";
  const model = new FakeModel();
  widget.initialize({ model });
  assert.deepEqual(model.kinds, ["transition:false"]);
});

test("freeze reports hidden, resume and pageshow report the current state", () => {
  const model = new FakeModel();
  widget.initialize({ model });
  doc.dispatchEvent(new Event("freeze"));
  doc.dispatchEvent(new Event("resume"));
  window.dispatchEvent(new Event("pageshow"));
  assert.deepEqual(model.kinds, ["transition:true", "transition:false", "transition:true", "transition:true"]);
});

test("pings quickly once, then every 2 s by default, then at the kernel's nextPingMs (clamped)", () => {
  const model = new FakeModel();
  widget.initialize({ model });
  mock.timers.tick(249);
  assert.equal(model.sent.length, 1);
  mock.timers.tick(1); // the quick first ping moves the comm onto the kernel's subshell
  assert.deepEqual(model.kinds, ["transition:true", "ping:true"]);
  mock.timers.tick(1999);
  assert.equal(model.sent.length, 2);
  mock.timers.tick(1);
  assert.equal(model.sent.length, 3);
  model.custom({ type: "ack", seq: 3, nextPingMs: 500 });
  mock.timers.tick(2000); // the delay already scheduled, then the new one
  assert.equal(model.sent.length, 4);
  mock.timers.tick(500);
  assert.equal(model.sent.length, 5);
  model.custom({ type: "ack", seq: 5, nextPingMs: 1 }); // clamped to 250
  model.custom({ type: "something-else", nextPingMs: 9000 }); // not an ack: ignored
  mock.timers.tick(500);
  mock.timers.tick(250);
  assert.equal(model.sent.length, 7);
  setVisibility("hidden");
  mock.timers.tick(250);
  assert.equal(model.sent.at(-1).kind, "ping");
  assert.equal(model.sent.at(-1).visible, false);
});

test("pagehide says bye, then the page is silent until it is shown again", () => {
  const model = new FakeModel();
  widget.initialize({ model });
  window.dispatchEvent(new Event("pagehide"));
  assert.deepEqual(model.kinds, ["transition:true", "bye:false"]);
  setVisibility("hidden"); // unloading pages still fire these
  doc.dispatchEvent(new Event("freeze"));
  doc.dispatchEvent(new Event("resume"));
  mock.timers.tick(10_000);
  assert.equal(model.sent.length, 2);
  doc.visibilityState = "visible";
  window.dispatchEvent(new Event("pageshow"));
  mock.timers.tick(2000);
  assert.deepEqual(model.kinds.slice(2), ["transition:true", "ping:true"]);
});

test("cleanup says bye once, then removes every listener and timer", () => {
  const model = new FakeModel();
  const cleanup = widget.initialize({ model });
  assert.equal(model.handlers.get("msg:custom")?.size, 1);
  cleanup();
  assert.deepEqual(model.kinds, ["transition:true", "bye:false"]);
  assert.equal(model.handlers.get("msg:custom")?.size, 0);
  setVisibility("hidden");
  doc.dispatchEvent(new Event("freeze"));
  window.dispatchEvent(new Event("pageshow"));
  window.dispatchEvent(new Event("pagehide"));
  mock.timers.tick(60_000);
  assert.deepEqual(model.kinds, ["transition:true", "bye:false"]);
});

test("each initialize is its own page; a failing send does not break the page", () => {
  const a = new FakeModel();
  const b = new FakeModel();
  widget.initialize({ model: a });
  widget.initialize({ model: b });
  assert.notEqual(a.sent[0].page, b.sent[0].page);
  b.failSends = true;
  assert.doesNotThrow(() => setVisibility("hidden"));
  assert.doesNotThrow(() => mock.timers.tick(250));
  b.failSends = false;
  mock.timers.tick(2000);
  assert.equal(b.sent.at(-1).kind, "ping");
  assert.equal(b.sent.at(-1).seq, 4); // the failed attempts still used their numbers
});

/** Page time under test control: timers and performance.now() advance together, 10 ms a step. */
const pageClock = (/** @type {any} */ t) => {
  let now = 0;
  const real = globalThis.performance;
  Object.defineProperty(globalThis, "performance", { value: { now: () => now }, configurable: true, writable: true });
  t.after(() => Object.defineProperty(globalThis, "performance", { value: real, configurable: true, writable: true }));
  return (/** @type {number} */ ms) => {
    for (let left = ms; left > 0; left -= 10) {
      now += Math.min(10, left);
      mock.timers.tick(Math.min(10, left));
    }
  };
};

test("idle rule: after idle_after_ms without input, one idle report from the last input; input counts again", (t) => {
  const advance = pageClock(t);
  const model = new FakeModel({ idle_after_ms: 5000 });
  widget.initialize({ model });
  advance(1000);
  window.dispatchEvent(new Event("pointermove"));
  advance(2000);
  window.dispatchEvent(new Event("keydown"));
  const lastInput = 3000;
  advance(4990);
  assert.ok(!model.kinds.includes("idle:false"));
  advance(10);
  const idle = model.sent.find((m) => m.kind === "idle");
  assert.deepEqual([idle.visible, idle.input, idle.t], [false, lastInput, 8000]);
  assert.deepEqual(Object.keys(idle).sort(), ["input", "kind", "page", "seq", "t", "type", "visible"]); // nothing about the input itself
  advance(3000);
  assert.equal(model.sent.filter((m) => m.kind === "idle").length, 1);
  assert.equal(model.sent.at(-1).visible, false); // pings while idle say not shown
  window.dispatchEvent(new Event("wheel"));
  const back = model.sent.at(-1);
  assert.deepEqual([back.kind, back.visible, back.t, back.input], ["transition", true, 11_000, 11_000]);
  advance(2000);
  assert.equal(model.sent.at(-1).input, 11_000); // pings carry the last input: the kernel's horizon
});

test("idle rule: hidden is not idle, and showing the page again counts as input", (t) => {
  const advance = pageClock(t);
  const model = new FakeModel({ idle_after_ms: 5000 });
  widget.initialize({ model });
  advance(1000);
  setVisibility("hidden");
  advance(20_000);
  assert.ok(!model.kinds.includes("idle:false"));
  setVisibility("visible");
  assert.equal(model.sent.at(-1).input, 21_000);
  advance(5000);
  assert.equal(model.sent.filter((m) => m.kind === "idle").at(-1).input, 21_000);
});

test("without the idle rule the page sends no input instants and ignores input", (t) => {
  const advance = pageClock(t);
  const model = new FakeModel({ idle_after_ms: 0 });
  widget.initialize({ model });
  window.dispatchEvent(new Event("keydown"));
  advance(60_000);
  assert.ok(model.sent.length > 10);
  assert.ok(model.sent.every((m) => !("input" in m) && m.kind !== "idle" && m.visible));
});
