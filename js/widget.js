// timeback_nb's page side: initialize (per page) reports visibility; render (per view) shows time.
import { buildReport, clampPingDelay, displayedElapsed, formatElapsed, newPageId, stateLabel, troubleOf } from "./format.js";

/** @typedef {{get(k: string): any, send(m: object): void, on(e: string, f: Function): void,
 *   off(e: string, f: Function): void}} Model */

/** Here, not in render: a widget shown twice, or a page with no view (reload, second browser),
 * reports once per page. @param {{model: Model}} ctx */
function initialize({ model }) {
  const page = newPageId();
  let seq = 0;
  let delay = clampPingDelay(undefined);
  let gone = false;
  let timer;
  const report = (/** @type {"transition"|"ping"|"bye"} */ kind, visible = document.visibilityState === "visible") => {
    try {
      model.send(buildReport(page, ++seq, kind, visible, performance.now()));
    } catch {
      // comm closing: a silent page counts as gone
    }
  };
  // After pagehide (unload still fires visibilitychange) the page is silent until pageshow.
  const onChange = () => gone || report("transition");
  const onFreeze = () => gone || report("transition", false);
  const onShow = () => { gone = false; report("transition"); };
  const onHide = () => { report("bye", false); gone = true; };
  const onAck = (msg) => {
    if (msg && msg.type === "ack") delay = clampPingDelay(msg.nextPingMs);
  };
  const ping = () => {
    if (!gone) report("ping");
    timer = setTimeout(ping, delay);
  };
  const listeners = [
    [document, "visibilitychange", onChange],
    [document, "freeze", onFreeze],
    [document, "resume", onChange],
    [window, "pageshow", onShow],
    [window, "pagehide", onHide],
  ];
  for (const [target, type, fn] of listeners) target.addEventListener(type, fn);
  model.on("msg:custom", onAck);
  report("transition");
  // A quick first ping: its reply moves the comm onto the kernel's comm subshell (ipykernel
  // routes a comm to the shell of its last reply): live reports during busy cells.
  timer = setTimeout(ping, 250);
  return () => {
    report("bye", false);
    clearTimeout(timer);
    for (const [target, type, fn] of listeners) target.removeEventListener(type, fn);
    model.off("msg:custom", onAck);
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
.tbnb-name{color:var(--jp-ui-font-color2,inherit)}
.tbnb-time{font-weight:600;font-variant-numeric:tabular-nums}
.tbnb-chip{padding:0 .5em;border-radius:.7em;font-size:var(--jp-ui-font-size0,11px);background:var(--jp-layout-color3,#8883)}
.tbnb[data-trouble=queued] .tbnb-chip{color:var(--jp-warn-color0,#e65100)}
.tbnb[data-trouble=rejected] .tbnb-chip{color:var(--jp-error-color0,#b71c1c)}
.tbnb-sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}`;

/** Elapsed time, ticking locally between kernel updates. @param {{model: Model, el: HTMLElement}} ctx */
function render({ model, el }) {
  el.innerHTML = `<style>${CSS}</style><div class="tbnb"><i aria-hidden="true"></i><span class="tbnb-name"></span>`
    + `<span class="tbnb-time" role="timer" aria-label="Active time">0:00</span><span class="tbnb-chip"></span>`
    + `<span class="tbnb-sr" aria-live="polite"></span></div>`;
  const root = el.lastElementChild;
  const [name, time, chip, live] = [...root.children].slice(1);
  let baseMs = 0;
  let baseAt = 0;
  const tick = () => {
    const text = formatElapsed(displayedElapsed(baseMs, baseAt, performance.now(), model.get("state")));
    if (time.textContent !== text) time.textContent = text;
  };
  const resync = () => {
    baseMs = model.get("elapsed_ms");
    baseAt = performance.now();
    tick();
  };
  const status = () => {
    const [state, pending, rejected] = ["state", "pending_events", "rejected_events"].map((k) => model.get(k));
    const label = stateLabel(state, model.get("mode"), pending, rejected);
    root.dataset.state = state;
    root.dataset.trouble = troubleOf(model.get("mode"), pending, rejected);
    name.textContent = model.get("activity_name");
    chip.textContent = label;
    chip.title = model.get("last_error") || label;
    // Spoken when the label changes, not every second.
    if (live.textContent !== `Timeback: ${label}`) live.textContent = `Timeback: ${label}`;
  };
  const onState = () => { resync(); status(); };
  model.on("change:elapsed_ms", resync);
  model.on("change:state", onState);
  for (const key of ["mode", "pending_events", "rejected_events", "last_error", "activity_name"]) {
    model.on(`change:${key}`, status);
  }
  onState();
  const interval = setInterval(tick, 250);
  return () => clearInterval(interval);
}

export default { initialize, render };
