// timeback_nb's page side: initialize (per page) reports whether the page shows the notebook;
// render (per view) shows time (docked at the notebook's edge while scrolled away) and anchors the
// page on the view's notebook panel.
import { buildReport, clampPingDelay, displayedElapsed, engineerLabel, formatElapsed, newPageId, recordedText, studentLabel, troubleOf } from "./format.js";
import { panelOf, showsNotebook, Sight, watchPanel } from "./visibility.js";

/** @typedef {{get(k: string): any, send(m: object): void, on(e: string, f: Function): void,
 *   off(e: string, f: Function): void}} Model */

// Notebook panels of this model's views (kept while the model lives: see visibility.js), and
// views not attached yet. anywidget imports the ESM once per model, from its own blob URL, so
// module scope links a model's initialize to its views and to nothing else.
const panels = new Map(); // panel -> undo of its watch
const unplaced = new Set();
let look = () => {};

/** Here, not in render: a widget shown twice, or a page with no view (reload, second browser),
 * reports once per page. @param {{model: Model}} ctx */
function initialize({ model }) {
  const page = newPageId();
  const sight = new Sight(model.get("idle_after_ms"), performance.now());
  let seq = 0;
  let delay = clampPingDelay(undefined);
  let gone = false;
  let timer;
  let idleTimer;
  const send = (kind, visible) => {
    try {
      // With the idle rule, the instant of the last input (and nothing else about it) goes too.
      model.send(buildReport(page, ++seq, kind, visible, performance.now(), sight.idleMs ? sight.last : undefined));
    } catch {
      // comm closing: a silent page counts as gone
    }
  };
  const act = (change) => {
    if (change && !gone) send(...change);
    clearTimeout(idleTimer);
    if (sight.due < Infinity) idleTimer = setTimeout(look, sight.due - performance.now());
  };
  const shows = () => {
    for (const el of unplaced) {
      const panel = panelOf(el);
      if (panel && unplaced.delete(el) && !panels.has(panel)) panels.set(panel, watchPanel(panel, () => look()));
    }
    return showsNotebook(document.visibilityState == "visible", [...panels.keys()]);
  };
  look = () => act(sight.see(shows(), performance.now()));
  const say = () => { sight.see(shows(), performance.now()); act(["transition", sight.visible]); };
  // After pagehide (unload still fires visibilitychange) the page is silent until pageshow.
  const onFreeze = () => act(sight.see(false, performance.now()));
  const onShow = () => { gone = false; say(); };
  const onHide = () => { send("bye", false); gone = true; };
  const onInput = () => act(sight.input(performance.now()));
  const onAck = (msg) => {
    if (msg && msg.type === "ack") delay = clampPingDelay(msg.nextPingMs);
  };
  const ping = () => {
    look(); // also places views attached since
    if (!gone) send("ping", sight.visible);
    timer = setTimeout(ping, delay);
  };
  const listeners = [
    [document, "visibilitychange", () => look()],
    [document, "freeze", onFreeze],
    [document, "resume", () => look()],
    [window, "pageshow", onShow],
    [window, "pagehide", onHide],
  ];
  if (sight.idleMs) {
    for (const type of ["keydown", "pointerdown", "pointermove", "wheel", "touchstart", "focus"]) listeners.push([window, type, onInput]);
  }
  const capture = { capture: true }; // focus does not bubble
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn, capture);
  model.on("msg:custom", onAck);
  say();
  // A quick first ping: its reply moves the comm onto the kernel's comm subshell (ipykernel
  // routes a comm to the shell of its last reply): live reports during busy cells.
  timer = setTimeout(ping, 250);
  return () => {
    send("bye", false);
    clearTimeout(timer);
    clearTimeout(idleTimer);
    for (const [target, type, fn] of listeners) target.removeEventListener(type, fn, capture);
    model.off("msg:custom", onAck);
    for (const unwatch of panels.values()) unwatch();
    panels.clear();
    look = () => {};
  };
}

// Jupyter theme variables; neutral fallbacks elsewhere (VS Code, Colab).
const CSS = `.tbnb{display:inline-flex;align-items:center;gap:.5em;padding:.1em .7em;border-radius:1em;
border:1px solid var(--jp-border-color2,#8884);background:var(--jp-layout-color2,#8882);
color:var(--jp-ui-font-color1,inherit);font:var(--jp-ui-font-size1,13px)/1.7 var(--jp-ui-font-family,sans-serif)}
.tbnb i{width:.6em;height:.6em;border-radius:50%;background:var(--jp-ui-font-color3,#999)}
.tbnb[data-state=active] i{background:var(--jp-brand-color1,#1976d2)}
.tbnb[data-state=abandoned] i{background:var(--jp-warn-color1,#f57c00)}
.tbnb[data-state=ended] i{background:var(--jp-success-color1,#388e3c)}
.tbnb-name,.tbnb-what{color:var(--jp-ui-font-color2,inherit)}
.tbnb-time{font-weight:600;font-variant-numeric:tabular-nums}
.tbnb-chip{padding:0 .5em;border-radius:.7em;font-size:var(--jp-ui-font-size0,11px);background:var(--jp-layout-color3,#8883)}
.tbnb[data-trouble=queued] .tbnb-chip{color:var(--jp-warn-color0,#e65100)}
.tbnb[data-trouble=rejected] .tbnb-chip{color:var(--jp-error-color0,#b71c1c)}
.tbnb-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
.tbnb-what{font-size:var(--jp-ui-font-size0,11px);margin:.2em .7em}
.tbnb-dock{position:absolute;bottom:.7em;right:1.5em;z-index:9;box-shadow:0 1px 3px #0003}`;

/** Elapsed time, ticking locally between kernel updates; docked at the panel's edge while the
 * view is scrolled away. @param {{model: Model, el: HTMLElement}} ctx */
function render({ model, el }) {
  el.innerHTML = `<style>${CSS}</style><div class="tbnb"><i aria-hidden="true"></i><span class="tbnb-name"></span>`
    + `<span class="tbnb-time" role="timer" aria-label="Active time"></span><span class="tbnb-chip"></span>`
    + `<span class="tbnb-sr" aria-live="polite"></span></div><details class="tbnb-what"><summary>What is recorded?</summary><span>`;
  const [, root, what] = el.children;
  const [, name, time, chip, live] = root.children;
  // A copy of dot and time, written by the same tick (a view, not a second count), with its own
  // <style>: windowed mode takes el's out of the DOM with the cell.
  const dock = document.createElement("div");
  dock.className = "tbnb tbnb-dock";
  dock.innerHTML = `<style>${CSS}</style><i></i><b class="tbnb-time">`;
  let area; // the notebook's area under its toolbar, remembered: windowed mode may detach el
  const observer = new IntersectionObserver((entries) => {
    area = panelOf(el)?.querySelector(".jp-NotebookPanel-notebook") || area;
    if (entries[entries.length - 1].isIntersecting || !area) dock.remove();
    else area.append(dock);
  });
  observer.observe(el);
  let baseMs = 0;
  let baseAt = 0;
  const tick = () => {
    const text = formatElapsed(displayedElapsed(baseMs, baseAt, performance.now(), model.get("state")));
    if (time.textContent !== text) time.textContent = dock.lastChild.textContent = text;
  };
  const resync = () => {
    baseMs = model.get("elapsed_ms");
    baseAt = performance.now();
    tick();
  };
  const status = () => {
    const facts = ["state", "mode", "pending_events", "rejected_events", "pages_showing"].map((k) => model.get(k));
    const [state, mode, pending, rejected] = facts;
    const label = studentLabel(...facts);
    root.dataset.state = dock.dataset.state = state;
    root.dataset.trouble = troubleOf(mode, pending, rejected);
    name.textContent = model.get("activity_name");
    chip.textContent = dock.title = label;
    chip.title = engineerLabel(...facts, model.get("last_error"));
    root.title = what.lastChild.textContent = recordedText(mode);
    // Spoken when the label changes, not every second.
    if (live.textContent !== `Timeback: ${label}`) live.textContent = `Timeback: ${label}`;
  };
  const onState = () => { resync(); status(); };
  model.on("change:elapsed_ms", resync);
  model.on("change:state", onState);
  for (const key of ["mode", "pending_events", "rejected_events", "pages_showing", "last_error", "activity_name"]) {
    model.on(`change:${key}`, status);
  }
  onState();
  const interval = setInterval(tick, 250);
  // Anchor the page's visibility on this view's notebook panel, once Lab has attached the view.
  // Until then the tab decides. Windowed notebooks may attach it long after render: check often, cheaply.
  unplaced.add(el);
  const placing = setInterval(() => (!unplaced.has(el) ? clearInterval(placing) : el.isConnected && look()), 50);
  return () => {
    clearInterval(interval);
    clearInterval(placing);
    unplaced.delete(el);
    observer.disconnect();
    dock.remove();
  };
}

export default { initialize, render };
