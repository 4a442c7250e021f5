// Pure helpers of the widget's page side (no DOM, no model), tested with `node --test`.

/** Active time as a clock: "0:07", "12:34", "1:02:03". @param {number} ms @returns {string} */
export function formatElapsed(ms) {
  const s = Math.floor(Math.max(0, Number.isFinite(ms) ? ms : 0) / 1000);
  const two = (n) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor(s / 60) % 60;
  return h ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/**
 * One page report. `t` is the page's `performance.now()`: the kernel maps it onto its own
 * clock, so a report that arrives late (busy kernel) still counts at the right moment.
 * @param {string} pageId @param {number} seq @param {"transition"|"ping"|"idle"|"bye"} kind
 * `input`: the instant of the page's last input (with the idle rule only), so the kernel knows
 * how far its time is settled: a stretch without input may still turn out idle.
 * @param {boolean} visible @param {number} t @param {number} [input]
 */
export function buildReport(pageId, seq, kind, visible, t, input) {
  const report = { type: "report", page: pageId, seq, kind, visible: Boolean(visible), t };
  return input === undefined ? report : { ...report, input };
}

/** A random id for this page (one per tab and per load). @returns {string} */
export function newPageId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  return `${Math.random().toString(16).slice(2)}-${Math.random().toString(16).slice(2)}`;
}

const STATES = ["active", "idle", "hidden", "paused", "abandoned", "ended"];
const WORDS = ["counting", "idle: not counting", "not counting", "paused", "stopped: away too long", "finished"];
// outbox mode holds events for the operator to send: saved, not stuck
const WHERE = { local: "saved on this computer", outbox: "saved on this computer", memory: "not saved",
  caliper: "sent to Timeback", relay: "sent to Timeback" };

/** The chip, for a student (also spoken): "counting · 3 waiting to send". `showing`: the kernel's
 * count of pages that show the notebook. */
export function studentLabel(state, mode, pending, rejected, showing) {
  const parts = [WORDS[STATES.indexOf(state)] ?? "connecting…"];
  if (showing > 1) parts.push("also open in another window");
  if (rejected) parts.push(`${rejected} not accepted`);
  if (pending && mode != "outbox") parts.push(`${pending} waiting to ${mode == "local" ? "save" : "send"}`);
  else if (!rejected && WHERE[mode]) parts.push(WHERE[mode]);
  return parts.join(" · ");
}

/** The chip's hover, for an engineer: "active · caliper · 3 queued · 1 rejected · <last error>". */
export const engineerLabel = (state, mode, pending, rejected, showing, error) =>
  [state, mode, pending && `${pending} queued`, rejected && `${rejected} rejected`, showing > 1 && `${showing} pages`, error]
    .filter(Boolean).join(" · ");

/** What is recorded, in plain words. */
export const recordedText = (mode) => "Recorded: the active and inactive time of this notebook and the results "
  + `the lesson reports, ${WHERE[mode] ?? "saved"}. Not recorded: keystrokes, code or outputs.`;

/** The chip's colour: rejected, queued, or none (outbox mode holds events on purpose). */
export function troubleOf(mode, pending, rejected) {
  return rejected > 0 ? "rejected" : pending > 0 && mode !== "outbox" ? "queued" : "";
}

/** The next ping delay from the kernel's `nextPingMs` (short just after a window boundary): 20..10000 ms, else 2000. */
export function clampPingDelay(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return 2000;
  return Math.min(10000, Math.max(20, ms));
}

/**
 * Shown time: the kernel's `elapsed_ms` (received at page time `baseAt`) plus local time,
 * only while the kernel says "active". @param {number} baseMs @param {number} baseAt
 * @param {number} now @param {string} state @returns {number}
 */
export function displayedElapsed(baseMs, baseAt, now, state) {
  return state === "active" ? baseMs + Math.max(0, now - baseAt) : baseMs;
}
