// Does this page show the notebook (design §3)? Lab hides a document behind another Lab tab while
// the browser tab stays visible, so views anchor on their notebook panel, kept once found:
// windowed notebooks take a scrolled-away cell's output out of the DOM, never the panel.

/** The notebook panel (Lab, Notebook 7) holding `el`, else null (other frontends, detached). */
export const panelOf = (el) => (el.isConnected && el.closest(".jp-NotebookPanel")) || null;

/** On screen: attached, with an area (Lumino's hidden modes: display:none, scale(0), content-visibility). */
export function panelShown(panel) {
  const { width, height } = panel.getBoundingClientRect();
  return panel.isConnected && width * height > 0 && panel.style.contentVisibility != "hidden";
}

/** `changed()` whenever the panel may have been shown or hidden (its class, style or size); returns the undo. */
export function watchPanel(panel, changed) {
  const observers = [new MutationObserver(changed), new ResizeObserver(changed)];
  observers[0].observe(panel, { attributeFilter: ["class", "style"] });
  observers[1].observe(panel);
  return () => observers.forEach((o) => o.disconnect());
}

/** The tab is visible and, if any views sit in notebook panels, one of those is shown. */
export const showsNotebook = (tabVisible, panels) => tabVisible && (!panels.length || panels.some(panelShown));

/** One page's "shows the notebook" with the idle rule (`idleMs` > 0): shown with no input for
 * `idleMs` is idle from the last input; being shown counts as input. Each method returns the
 * report to send, [kind, visible], or null. */
export class Sight {
  constructor(idleMs, now) {
    this.idleMs = idleMs > 0 ? idleMs : 0;
    this.shown = this.idle = false;
    this.last = now; // the last input
  }

  get visible() { return this.shown && !this.idle; }

  /** When it turns idle without further input (page ms). */
  get due() { return this.idleMs && this.visible ? this.last + this.idleMs : Infinity; }

  see(shown, now) {
    if (shown == this.shown) return this.check(now);
    this.shown = shown;
    this.idle = false;
    if (shown) this.last = now;
    return ["transition", shown];
  }

  input(now) {
    this.last = now;
    if (!this.idle) return null;
    this.idle = false;
    return ["transition", true];
  }

  check(now) {
    if (now < this.due) return null;
    this.idle = true;
    return ["idle", false];
  }
}
