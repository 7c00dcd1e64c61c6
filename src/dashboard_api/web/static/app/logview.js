// A task's live log: chunks appended in seq order (duplicates dropped, so a resume that
// overlaps is harmless), drawn in batches once per frame, and bounded: past `limit` chunks
// the oldest leave the DOM (the full log stays one download away). Built with DOM calls and
// text nodes only; a chunk's stream (stdout/stderr/system) is a class on its element.
import { AnsiState, ansiSegments } from "./ansi.js";

export const DEFAULT_LIMIT = 2000;

export class LogView {
  constructor(container, { limit = DEFAULT_LIMIT, onTrim } = {}) {
    this.container = container;
    this.limit = limit;
    this.onTrim = onTrim;
    this.lastSeq = 0;
    this.trimmed = 0; // chunks dropped from the DOM
    this.count = 0; // chunks in the DOM
    this.pending = [];
    this.frame = 0;
    this.follow = true;
    this.states = { stdout: new AnsiState(), stderr: new AnsiState(), system: new AnsiState() };
    this.onScroll = () => {
      const el = this.container;
      const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
      if (!atBottom && this.follow && !this.autoScrolling) this.setFollow(false);
      this.autoScrolling = false;
    };
    container.addEventListener("scroll", this.onScroll, { passive: true });
    this.followListeners = new Set();
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

  // Start after `seq` (the chunks before it are not shown).
  startAfter(seq) {
    this.lastSeq = seq;
    this.trimmed = seq;
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
    let batch = this.pending;
    this.pending = [];
    if (batch.length > this.limit) {
      this.trimmed += batch.length - this.limit;
      batch = batch.slice(batch.length - this.limit);
    }
    const fragment = document.createDocumentFragment();
    for (const chunk of batch) fragment.append(this.render(chunk));
    this.container.append(fragment);
    this.count += batch.length;
    let excess = this.count - this.limit;
    if (excess > 0) {
      this.trimmed += excess;
      this.count -= excess;
      while (excess-- > 0) this.container.firstElementChild?.remove();
    }
    if (this.trimmed && this.onTrim) this.onTrim(this.trimmed);
    if (this.follow) this.scrollToEnd();
  }

  render(chunk) {
    const stream = ["stdout", "stderr", "system"].includes(chunk.stream) ? chunk.stream : "stdout";
    const line = document.createElement("span");
    line.className = `chunk stream-${stream}`;
    line.dataset.seq = String(chunk.seq);
    for (const segment of ansiSegments(chunk.content, this.states[stream])) {
      if (segment.cls) {
        const span = document.createElement("span");
        span.className = segment.cls;
        span.textContent = segment.text;
        line.append(span);
      } else {
        line.append(document.createTextNode(segment.text));
      }
    }
    return line;
  }
}
