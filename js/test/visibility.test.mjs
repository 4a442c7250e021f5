// The page-side decisions "shows the notebook" and "idle", against stand-in elements.
import assert from "node:assert/strict";
import { mock, test } from "node:test";

import { panelOf, panelShown, showsNotebook, Sight, watchPanel } from "../visibility.js";

/** A stand-in element: attached or not, laid out at some size, inside a panel or not. */
const element = ({ connected = true, width = 800, height = 600, panel = null, contentVisibility = "" } = {}) => ({
  isConnected: connected,
  style: { contentVisibility },
  getBoundingClientRect: () => ({ width, height }),
  closest: (/** @type {string} */ selector) => (selector === ".jp-NotebookPanel" ? panel : null),
});

test("the panel above a view is found once the view is attached, and only in a notebook", () => {
  const panel = element();
  assert.equal(panelOf(element({ panel })), panel);
  assert.equal(panelOf(element({ panel, connected: false })), null); // not placed yet
  assert.equal(panelOf(element()), null); // VS Code, Colab: no notebook panel
});

test("a panel is shown when attached with an area and not content-hidden (each Lumino hidden mode)", () => {
  assert.equal(panelShown(element()), true);
  assert.equal(panelShown(element({ width: 0, height: 0 })), false); // display: none (Lab's default)
  assert.equal(panelShown(element({ width: 0 })), false); // transform: scale(0)
  assert.equal(panelShown(element({ contentVisibility: "hidden" })), false);
  assert.equal(panelShown(element({ connected: false })), false); // its Lab tab was closed
});

test("the page shows the notebook: tab visible, and one of its panels shown when there are any", () => {
  const [front, behind] = [element(), element({ width: 0, height: 0 })];
  assert.equal(showsNotebook(true, []), true); // no view (reload, second browser): the tab decides
  assert.equal(showsNotebook(false, []), false);
  assert.equal(showsNotebook(true, [behind]), false); // behind another Lab document
  assert.equal(showsNotebook(true, [behind, front]), true); // e.g. a split, or a second view
  assert.equal(showsNotebook(false, [front]), false);
});

test("watchPanel listens to the panel's class and style and to its size, and undoes both", () => {
  const made = [];
  class Observer {
    constructor(/** @type {Function} */ fn) { this.fn = fn; this.watching = []; made.push(this); }
    observe(/** @type {any} */ target, /** @type {any} */ options) { this.watching.push([target, options]); }
    disconnect() { this.watching = []; }
  }
  globalThis.MutationObserver = /** @type {any} */ (Observer);
  globalThis.ResizeObserver = /** @type {any} */ (Observer);
  try {
    const panel = element();
    let calls = 0;
    const undo = watchPanel(panel, () => calls++);
    const [mutations, sizes] = made;
    assert.deepEqual(mutations.watching, [[panel, { attributeFilter: ["class", "style"] }]]);
    assert.deepEqual(sizes.watching, [[panel, undefined]]);
    mutations.fn([]);
    sizes.fn([]);
    assert.equal(calls, 2);
    undo();
    assert.deepEqual([mutations.watching, sizes.watching], [[], []]);
  } finally {
    delete globalThis.MutationObserver;
    delete globalThis.ResizeObserver;
  }
});

test("Sight reports changes of shown only, each once", () => {
  const sight = new Sight(0, 0);
  assert.deepEqual(sight.see(true, 10), ["transition", true]);
  assert.equal(sight.see(true, 20), null);
  assert.deepEqual(sight.see(false, 30), ["transition", false]);
  assert.equal(sight.see(false, 40), null);
  assert.equal(sight.input(50), null);
  assert.equal(sight.due, Infinity); // no idle rule
  assert.deepEqual(sight.see(true, 1e9), ["transition", true]);
  assert.equal(sight.check(2e9), null); // never idle without the rule
});

test("Sight with the idle rule: idle once after idleAfterMs without input, from the last input", () => {
  const sight = new Sight(5000, 0);
  sight.see(true, 100); // being shown counts as input
  assert.equal(sight.due, 5100);
  sight.input(1000);
  sight.input(2000);
  assert.equal(sight.check(6999), null);
  assert.deepEqual(sight.check(7000), ["idle", false]);
  assert.equal(sight.last, 2000); // the report carries this instant: idle from there
  assert.equal(sight.visible, false);
  assert.equal(sight.check(9000), null); // said once
  assert.equal(sight.due, Infinity);
  assert.deepEqual(sight.input(9500), ["transition", true]); // input counts again
  assert.equal(sight.visible, true);
  assert.equal(sight.due, 14_500);
});

test("Sight: hidden time is never idle, and coming back counts as input", () => {
  const sight = new Sight(5000, 0);
  sight.see(true, 0);
  assert.deepEqual(sight.see(false, 3000), ["transition", false]);
  assert.equal(sight.due, Infinity);
  assert.equal(sight.check(60_000), null); // hidden: not idle, whatever the time
  sight.input(61_000); // typing in another Lab document
  assert.deepEqual(sight.see(true, 70_000), ["transition", true]);
  assert.equal(sight.due, 75_000);
  assert.deepEqual(sight.see(true, 75_000), ["idle", false]);
  assert.deepEqual(sight.see(false, 76_000), ["transition", false]); // idle, then hidden: hidden
  assert.equal(sight.idle, false);
});

test("Sight: a zero, negative or missing idleAfterMs means no idle rule", () => {
  for (const value of [0, -1, undefined, null]) {
    const sight = new Sight(/** @type {any} */ (value), 0);
    sight.see(true, 0);
    assert.equal(sight.idleMs, 0);
    assert.equal(sight.check(1e9), null);
  }
});
