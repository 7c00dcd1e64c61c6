// ANSI SGR colours in task output, turned into text segments with CSS classes. Nothing of
// the output ever becomes markup: each segment is set as a text node's content, and the
// only attribute derived from it is a class chosen from a fixed list.
const ESC_SEQUENCE = /\x1b(?:\[([0-9;?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])/g;

export class AnsiState {
  constructor() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
  }

  classes() {
    const out = [];
    if (this.fg !== null) out.push(`ansi-fg-${this.fg}`);
    if (this.bg !== null) out.push(`ansi-bg-${this.bg}`);
    if (this.bold) out.push("ansi-bold");
    if (this.dim) out.push("ansi-dim");
    if (this.italic) out.push("ansi-italic");
    if (this.underline) out.push("ansi-underline");
    return out.join(" ");
  }

  apply(params) {
    const codes = params === "" ? [0] : params.split(";").map((p) => Number.parseInt(p, 10) || 0);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) Object.assign(this, new AnsiState());
      else if (c === 1) this.bold = true;
      else if (c === 2) this.dim = true;
      else if (c === 3) this.italic = true;
      else if (c === 4) this.underline = true;
      else if (c === 22) this.bold = this.dim = false;
      else if (c === 23) this.italic = false;
      else if (c === 24) this.underline = false;
      else if (c >= 30 && c <= 37) this.fg = c - 30;
      else if (c >= 90 && c <= 97) this.fg = c - 90 + 8;
      else if (c === 39) this.fg = null;
      else if (c >= 40 && c <= 47) this.bg = c - 40;
      else if (c >= 100 && c <= 107) this.bg = c - 100 + 8;
      else if (c === 49) this.bg = null;
      else if (c === 38 || c === 48) {
        // 256-colour (5;n) keeps the 16 basic ones; true colour (2;r;g;b) is skipped.
        const mode = codes[i + 1];
        if (mode === 5) {
          const n = codes[i + 2];
          if (n !== undefined && n < 16) {
            if (c === 38) this.fg = n;
            else this.bg = n;
          }
          i += 2;
        } else if (mode === 2) {
          i += 4;
        }
      }
    }
  }
}

// [{text, cls}] for one piece of output; `state` carries colours across chunks.
export function ansiSegments(text, state) {
  const out = [];
  let last = 0;
  ESC_SEQUENCE.lastIndex = 0;
  let m;
  while ((m = ESC_SEQUENCE.exec(text)) !== null) {
    if (m.index > last) out.push({ text: text.slice(last, m.index), cls: state.classes() });
    if (m[2] === "m") state.apply(m[1] || "");
    last = ESC_SEQUENCE.lastIndex;
  }
  if (last < text.length) out.push({ text: text.slice(last), cls: state.classes() });
  return out;
}

export function stripAnsi(text) {
  return text.replace(ESC_SEQUENCE, "");
}
