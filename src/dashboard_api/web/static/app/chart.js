// Charts with uPlot (vendored; the global `uPlot` comes from its deferred classic script).
// A chart sits in [data-testid=chart-NAME] and follows its container's width and the theme.
import { html, useEffect, useRef } from "./html.js";

const PALETTE = ["#2f6fde", "#1f9d6b", "#d9534f", "#c58a00", "#8a5cd1"];

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// series: [{label, values: number[], kind?: "bars"|"line", format?: fn}], x: seconds since epoch
export function Chart({ name, title, x, series, height = 220, yFormat, period = "day" }) {
  const box = useRef(null);
  useEffect(() => {
    const el = box.current;
    if (!el || !window.uPlot) return undefined;
    let plot = null;
    const build = () => {
      plot?.destroy();
      const axisColor = cssVar("--muted", "#667");
      const gridColor = cssVar("--grid", "rgba(128,128,128,.15)");
      const bars = window.uPlot.paths.bars({ size: [0.7, 60], align: 0 });
      const axisValues =
        period === "hour"
          ? (u, splits) => splits.map((s) => new Date(s * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }))
          : (u, splits) => splits.map((s) => new Date(s * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric" }));
      plot = new window.uPlot(
        {
          width: Math.max(200, el.clientWidth),
          height,
          legend: { show: series.length > 1 },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true } },
          axes: [
            { stroke: axisColor, grid: { stroke: gridColor }, ticks: { stroke: gridColor }, values: axisValues },
            {
              stroke: axisColor,
              grid: { stroke: gridColor },
              ticks: { stroke: gridColor },
              size: 70,
              values: yFormat ? (u, splits) => splits.map(yFormat) : undefined,
            },
          ],
          series: [
            { label: "Time", value: (u, v) => (v == null ? "—" : new Date(v * 1000).toLocaleString()) },
            ...series.map((s, i) => ({
              label: s.label,
              stroke: PALETTE[i % PALETTE.length],
              fill: s.kind === "bars" ? `${PALETTE[i % PALETTE.length]}aa` : undefined,
              width: s.kind === "bars" ? 0 : 2,
              paths: s.kind === "bars" ? bars : undefined,
              points: { show: false },
              value: (u, v) => (v == null ? "—" : (s.format || yFormat || String)(v)),
            })),
          ],
        },
        [x, ...series.map((s) => s.values)],
        el,
      );
    };
    build();
    const observer = new ResizeObserver(() => {
      if (plot && Math.abs(plot.width - el.clientWidth) > 4) {
        plot.setSize({ width: Math.max(200, el.clientWidth), height });
      }
    });
    observer.observe(el);
    const onTheme = () => build();
    addEventListener("dashboard-theme", onTheme);
    return () => {
      observer.disconnect();
      removeEventListener("dashboard-theme", onTheme);
      plot?.destroy();
    };
  }, [x, series, height, period]);
  return html`<figure class="chart">
    ${title && html`<figcaption>${title}</figcaption>`}
    <div class="chart-box" data-testid=${`chart-${name}`} ref=${box}
      role="img" aria-label=${title || name}></div>
  </figure>`;
}

export function bucketsToX(buckets) {
  return buckets.map((b) => new Date(b.start).getTime() / 1000);
}
