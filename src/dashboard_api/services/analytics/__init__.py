"""Analytics: rollups kept by every task write, folded in batches, and read per window.

- `layout`      what the rollups hold: grains, series, kinds, counters, log bins (a leaf)
- `bins`        a block's histogram bins packed in one value, and sums of them
- `rollups`     deltas of a task write, and adding them to the rollups
- `rebuild`     rebuilding the rollups from the tasks (and binning tasks in SQL)
- `fold`        folding pending contributions into the rollups, in batches
- `window`      a window cut into rollup blocks and raw edge rows
- `reads`       summary and histogram over a window
- `performance` per-group figures and percentiles over a window
"""
