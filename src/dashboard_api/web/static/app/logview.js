// A task's live log: chunks appended in seq order (duplicates dropped, so a resume that
// overlaps is harmless), drawn in batches once per frame, and bounded.
//
// The text is laid out as one block element per line (a chunk's text keeps its "\n", so the
// log's textContent is the output exactly): appending lines then lays out only the new
// blocks, where one long inline run would be laid out whole on every frame. A chunk is one
// span per line it touches (`.chunk`, its stream a class); the first carries `data-seq`.
// Past `limit` lines the oldest leave the DOM (the full log stays one download away). Built
// with DOM calls and text nodes only.
import { AnsiState, ansiSegments } from "./ansi.js";

export const DEFAULT_LIMIT = 2000; // lines in the DOM

export class LogView {
  constructor(container, { limit = DEFAULT_LIMIT, onTrim } = {}) {
    this.container = container;
    this.limit = limit;
    this.onTrim = onTrim;
    this.lastSeq = 0;
    this.hidden = 0; // chunks not in the DOM (before the start, or trimmed)
    this.lines = 0; // line elements in the DOM
    this.open = null; // the last line, while it has no "\n" yet
    this.pending = [];
    this.frame = 0;
    this.follow = true;
    this.autoScrolling = false;
    this.lastTrimReport = 0;
    this.states = { stdout: new AnsiState(), stderr: new AnsiState(), system: new AnsiState() };
    this.followListeners = new Set();
    this.onScroll = () => {
      if (this.autoScrolling) {
        this.autoScrolling = false;
        return;
      }
      const el = this.container;
      const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
      if (atBottom !== this.follow) this.setFollow(atBottom);
    };
    container.addEventListener("scroll", this.onScroll, { passive: true });
  }

  destroy() {
    cancelAnimationFrame(this.frame);
    this.container.removeEventListener("scroll", this.onScroll);
  }

  setFollow(on) {
    this.follow = on;
    for (const fn of this.followListeners) fn(on);
    if (on) this.scrollToEnd();
  }

  scrollToEnd() {
    this.autoScrolling = true;
    this.container.scrollTop = this.container.scrollHeight;
  }

  // Start after `seq` (the chunks up to it are not shown).
  startAfter(seq) {
    this.lastSeq = seq;
    this.hidden = seq;
  }

  // Returns false for a chunk already shown (a replay overlapping what we have).
  push(chunk) {
    if (chunk.seq <= this.lastSeq) return false;
    this.lastSeq = chunk.seq;
    this.pending.push(chunk);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
    return true;
  }

  flush() {
    this.frame = 0;
    const batch = this.pending;
    this.pending = [];
    const fragment = document.createDocumentFragment();
    let open = this.open;
    let openInFragment = false;
    const newLine = () => {
      open = document.createElement("div");
      open.className = "line";
      fragment.append(open);
      openInFragment = true;
      this.lines += 1;
    };
    for (const chunk of batch) {
      const stream = ["stdout", "stderr", "system"].includes(chunk.stream) ? chunk.stream : "stdout";
      let piece = null;
      let first = true;
      for (const segment of ansiSegments(chunk.content, this.states[stream])) {
        const parts = segment.text.split("\n");
        for (let i = 0; i < parts.length; i++) {
          const text = i < parts.length - 1 ? `${parts[i]}\n` : parts[i];
          if (!text) continue;
          if (!open) newLine();
          if (!piece) {
            piece = document.createElement("span");
            piece.className = `chunk stream-${stream}`;
            if (first) piece.dataset.seq = String(chunk.seq);
            first = false;
            open.append(piece);
          }
          if (segment.cls) {
            const span = document.createElement("span");
            span.className = segment.cls;
            span.textContent = text;
            piece.append(span);
          } else {
            piece.append(text);
          }
          if (text.endsWith("\n")) {
            open = null; // the next text starts a new line
            piece = null;
          }
        }
      }
    }
    this.open = open;
    if (!openInFragment && fragment.childNodes.length === 0 && batch.length === 0) return;
    this.container.append(fragment);
    let excess = this.lines - this.limit;
    if (excess > 0) {
      this.lines -= excess;
      while (excess-- > 0) {
        const line = this.container.firstElementChild;
        if (!line) break;
        this.hidden += line.querySelectorAll("[data-seq]").length;
        line.remove();
      }
    }
    const now = performance.now();
    if (this.hidden && this.onTrim && now - this.lastTrimReport > 250) {
      this.lastTrimReport = now;
      this.onTrim(this.hidden);
    }
    if (this.follow) this.scrollToEnd();
  }
}
