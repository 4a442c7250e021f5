import assert from "node:assert/strict";
import { test } from "node:test";

import {
  buildReport,
  clampPingDelay,
  displayedElapsed,
  formatElapsed,
  engineerLabel,
  newPageId,
  recordedText,
  studentLabel,
  troubleOf,
} from "../format.js";

test("formatElapsed shows m:ss under an hour and h:mm:ss above", () => {
  assert.equal(formatElapsed(0), "0:00");
  assert.equal(formatElapsed(7_999), "0:07");
  assert.equal(formatElapsed(754_000), "12:34");
  assert.equal(formatElapsed(3_599_999), "59:59");
  assert.equal(formatElapsed(3_600_000), "1:00:00");
  assert.equal(formatElapsed(3_723_000), "1:02:03");
  assert.equal(formatElapsed(36_000_000 + 61_000), "10:01:01");
});

test("formatElapsed never shows negative or garbage time", () => {
  assert.equal(formatElapsed(-5_000), "0:00");
  assert.equal(formatElapsed(Number.NaN), "0:00");
  assert.equal(formatElapsed(Number.POSITIVE_INFINITY), "0:00");
});

test("buildReport has exactly the contract's keys, visible coerced to a boolean", () => {
  const report = buildReport("p1", 3, "ping", 1, 1234.5);
  assert.deepEqual(report, { type: "report", page: "p1", seq: 3, kind: "ping", visible: true, t: 1234.5 });
  assert.equal(buildReport("p1", 4, "bye", undefined, 0).visible, false);
});

test("newPageId is random and uses crypto.randomUUID when there", () => {
  const ids = new Set(Array.from({ length: 50 }, newPageId));
  assert.equal(ids.size, 50);
  assert.match(newPageId(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

test("newPageId falls back when crypto.randomUUID is missing", (t) => {
  const original = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  Object.defineProperty(globalThis, "crypto", { value: {}, configurable: true });
  t.after(() => Object.defineProperty(globalThis, "crypto", original));
  const a = newPageId();
  const b = newPageId();
  assert.notEqual(a, b);
  assert.ok(a.length >= 16, a);
});

test("studentLabel says each state in a student's words", () => {
  const say = (state) => studentLabel(state, "caliper", 0, 0, 1).split(" · ")[0];
  assert.equal(say("active"), "counting");
  assert.equal(say("idle"), "idle: not counting");
  assert.equal(say("hidden"), "not counting");
  assert.equal(say("paused"), "paused");
  assert.equal(say("abandoned"), "stopped: away too long");
  assert.equal(say("ended"), "finished");
  assert.equal(say(""), "connecting…");
  assert.equal(say("toString"), "connecting…");
});

test("studentLabel says where the time goes, and what is waiting or refused", () => {
  assert.equal(studentLabel("active", "caliper", 0, 0, 1), "counting · sent to Timeback");
  assert.equal(studentLabel("active", "relay", 0, 0, 1), "counting · sent to Timeback");
  assert.equal(studentLabel("active", "local", 0, 0, 1), "counting · saved on this computer");
  assert.equal(studentLabel("paused", "memory", 0, 0, 0), "paused · not saved");
  assert.equal(studentLabel("active", "caliper", 3, 0, 1), "counting · 3 waiting to send");
  assert.equal(studentLabel("active", "local", 1, 0, 1), "counting · 1 waiting to save");
  // outbox mode holds events for the operator on purpose: they are saved, not stuck
  assert.equal(studentLabel("active", "outbox", 5, 0, 1), "counting · saved on this computer");
  assert.equal(studentLabel("ended", "caliper", 2, 1, 0), "finished · 1 not accepted · 2 waiting to send");
  assert.equal(studentLabel("abandoned", "local", 0, 4, 0), "stopped: away too long · 4 not accepted");
  assert.equal(studentLabel("active", "", 0, 0, 1), "counting");
});

test("studentLabel says so when another window also shows the notebook", () => {
  assert.equal(studentLabel("active", "local", 0, 0, 2), "counting · also open in another window · saved on this computer");
  assert.equal(studentLabel("active", "caliper", 0, 0, 3).split(" · ")[1], "also open in another window");
  assert.ok(!studentLabel("active", "caliper", 0, 0, 1).includes("another window"));
  assert.ok(!studentLabel("hidden", "caliper", 0, 0, 0).includes("another window"));
});

test("engineerLabel keeps the exact facts for the hover: state, mode, counts, pages, error", () => {
  assert.equal(engineerLabel("active", "caliper", 0, 0, 1, ""), "active · caliper");
  assert.equal(engineerLabel("hidden", "local", 3, 1, 0, ""), "hidden · local · 3 queued · 1 rejected");
  assert.equal(engineerLabel("active", "outbox", 5, 0, 1, ""), "active · outbox · 5 queued");
  assert.equal(engineerLabel("active", "caliper", 0, 0, 2, ""), "active · caliper · 2 pages");
  assert.equal(engineerLabel("", "caliper", 2, 0, 0, "HTTP 503: retrying"), "caliper · 2 queued · HTTP 503: retrying");
});

test("recordedText says what is recorded, where it goes, and what is not", () => {
  for (const mode of ["caliper", "relay", "local", "outbox", "memory", "other"]) {
    const text = recordedText(mode);
    assert.match(text, /^Recorded: the active and inactive time of this notebook and the results the lesson reports, /);
    assert.match(text, /\. Not recorded: keystrokes, code or outputs\.$/);
  }
  assert.match(recordedText("caliper"), /, sent to Timeback\./);
  assert.match(recordedText("relay"), /, sent to Timeback\./);
  assert.match(recordedText("local"), /, saved on this computer\./);
  assert.match(recordedText("outbox"), /, saved on this computer\./);
  assert.match(recordedText("memory"), /, not saved\./);
});

test("clampPingDelay keeps the kernel's delay within 20..10000 ms, default 2000", () => {
  assert.equal(clampPingDelay(1500), 1500);
  assert.equal(clampPingDelay(45), 45); // just after a window boundary the kernel is waiting for
  assert.equal(clampPingDelay(10), 20);
  assert.equal(clampPingDelay(60_000), 10_000);
  assert.equal(clampPingDelay(undefined), 2000);
  assert.equal(clampPingDelay("500"), 2000);
  assert.equal(clampPingDelay(Number.NaN), 2000);
});

test("displayedElapsed ticks only while active", () => {
  assert.equal(displayedElapsed(5_000, 100, 1_600, "active"), 6_500);
  assert.equal(displayedElapsed(5_000, 100, 1_600, "hidden"), 5_000);
  assert.equal(displayedElapsed(5_000, 100, 1_600, "ended"), 5_000);
  // a clock read before the base (never expected) does not run time backwards
  assert.equal(displayedElapsed(5_000, 100, 50, "active"), 5_000);
});

test("troubleOf colours rejected, and queued unless outbox mode holds them on purpose", () => {
  assert.equal(troubleOf("caliper", 0, 0), "");
  assert.equal(troubleOf("caliper", 3, 0), "queued");
  assert.equal(troubleOf("local", 1, 0), "queued");
  assert.equal(troubleOf("outbox", 5, 0), "", "held for the operator: not trouble");
  assert.equal(troubleOf("outbox", 5, 2), "rejected");
  assert.equal(troubleOf("caliper", 0, 1), "rejected");
});
