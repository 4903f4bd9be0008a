/**
 * The lineage graph's layout: pure, from `GET lineage/{id}` to boxes and lines in pixels.
 *
 * A simple layered layout, left to right: the notebook (where a pipeline's first values come
 * from) in the first column, then each step one column right of its right-most parent (so
 * steps read in run order), the snapshots that took the shown one's values after it. A
 * column's nodes are stacked in step order and centred on the tallest column; the gap after
 * a column is as wide as the value names written on its edges need.
 */
import { ILineage, ILineageEdge, ILineageNode } from './api';

/** The start node's key: snapshot ids are hex, so no snapshot has it. */
export const NOTEBOOK_KEY = '@notebook';

export interface IGraphNode {
  /** The snapshot id, or NOTEBOOK_KEY. */
  key: string;
  kind: 'notebook' | 'step' | 'child';
  label: string;
  /** The first 6 characters of the id ('' for the notebook). */
  shortId: string;
  /** Its place in the run order, from 1; null for the notebook and children. */
  step: number | null;
  status: string | null;
  /** A parent removed since: shown, but nothing to open. */
  missing: boolean;
  /** The snapshot whose details show the graph. */
  selected: boolean;
  layer: number;
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface IGraphEdge {
  from: string;
  to: string;
  /** The value names on it, as shown (shortened to fit). */
  label: string;
  /** Every value in full: `output → input`, or the name when both are the same. */
  title: string;
  /** The SVG path, from the right side of `from` to the left side of `to`. */
  path: string;
  /** Where the label's middle goes. */
  labelX: number;
  labelY: number;
}

export interface IGraphLayout {
  nodes: IGraphNode[];
  edges: IGraphEdge[];
  width: number;
  height: number;
}

export const SIZES = {
  /** A step's box fits its name, within these bounds (a longer name is cut with "…"). */
  minStepWidth: 84,
  maxStepWidth: 160,
  notebookWidth: 76,
  nodeHeight: 38,
  rowGap: 10,
  minGap: 40,
  /** How far above the top row an arc over a column goes, and the next one above it. */
  arcRise: 14,
  arcStep: 14,
  maxGap: 112,
  pad: 4,
  /** Padding and border inside a box, both sides. */
  nodePad: 20,
  /** Of the bold name and the small id line; estimated, as there is no DOM to measure in. */
  nameCharWidth: 8.5,
  idCharWidth: 7,
  /** Of the 10px label font. */
  charWidth: 6.2
};

/** Whether a snapshot's lineage is worth a graph: it took values from, or gave values to, another. */
export function hasLineage(lineage: ILineage | null | undefined): boolean {
  return !!lineage && (lineage.edges.length > 0 || lineage.children.length > 0);
}

export const shortId = (id: string): string => id.slice(0, 6);

/** The width in pixels of a text in one of the graph's fonts. */
export type Measure = (text: string, font: 'name' | 'id' | 'label') => number;

/** An estimate from the number of characters, where nothing can measure text (tests). */
export function estimate(sizes: typeof SIZES = SIZES): Measure {
  const per = {
    name: sizes.nameCharWidth,
    id: sizes.idCharWidth,
    label: sizes.charWidth
  };
  return (text, font) => text.length * per[font];
}

export function layoutLineage(
  lineage: ILineage,
  sizes: typeof SIZES = SIZES,
  measure: Measure = estimate(sizes)
): IGraphLayout {
  const { nodes: steps, edges: stepEdges } = lineage;
  const byId = new Map(steps.map(n => [n.id, n]));
  const fromNotebook = steps.filter(n => (n.notebook || []).length > 0);
  const start = fromNotebook.length > 0 ? 1 : 0;

  // Layers: in run order, every parent is placed before its children.
  const layer = new Map<string, number>();
  if (start) {
    layer.set(NOTEBOOK_KEY, 0);
  }
  const order = [...steps].sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
  for (const node of order) {
    let at = start;
    for (const e of stepEdges) {
      if (e.to === node.id && layer.has(e.from)) {
        at = Math.max(at, (layer.get(e.from) as number) + 1);
      }
    }
    layer.set(node.id, at);
  }
  const rootLayer = layer.get(lineage.snapshot) ?? start;
  const children = lineage.children.filter(c => !byId.has(c.id));
  for (const child of children) {
    layer.set(child.id, rootLayer + 1);
  }

  const nodes: IGraphNode[] = [];
  const node = (
    key: string,
    kind: IGraphNode['kind'],
    n: ILineageNode | null
  ): IGraphNode => {
    const label =
      kind === 'notebook' ? 'notebook' : n?.missing ? 'removed' : n?.name || 'unnamed';
    const step = kind === 'step' ? (n?.step ?? null) : null;
    const idLine = `${step !== null ? `${step} · ` : ''}${shortId(key)}`;
    const fits = Math.ceil(
      Math.max(measure(label, 'name'), measure(idLine, 'id')) + sizes.nodePad
    );
    return {
      key,
      kind,
      label,
      shortId: kind === 'notebook' ? '' : shortId(key),
      step,
      status: n?.missing ? null : (n?.status ?? null),
      missing: !!n?.missing,
      selected: key === lineage.snapshot,
      layer: layer.get(key) as number,
      x: 0,
      y: 0,
      width:
        kind === 'notebook'
          ? sizes.notebookWidth
          : Math.min(sizes.maxStepWidth, Math.max(sizes.minStepWidth, fits)),
      height: sizes.nodeHeight
    };
  };
  if (start) {
    nodes.push(node(NOTEBOOK_KEY, 'notebook', null));
  }
  order.forEach(n => nodes.push(node(n.id, 'step', n)));
  children.forEach(n => nodes.push(node(n.id, 'child', n)));

  // Edges, one per pair of nodes, with every value between them.
  const values = new Map<string, { from: string; to: string; names: string[] }>();
  const addValue = (from: string, to: string, name: string) => {
    const k = `${from}\n${to}`;
    const v = values.get(k) || { from, to, names: [] };
    if (!v.names.includes(name)) {
      v.names.push(name);
    }
    values.set(k, v);
  };
  const valueName = (e: ILineageEdge) => {
    const output = e.output || '?';
    const input = e.input || '?';
    return output === input ? input : `${output} → ${input}`;
  };
  for (const n of fromNotebook) {
    for (const v of n.notebook || []) {
      addValue(NOTEBOOK_KEY, n.id, v.input || '?');
    }
  }
  for (const e of [...stepEdges, ...lineage.child_edges]) {
    if (layer.has(e.from) && layer.has(e.to)) {
      addValue(e.from, e.to, valueName(e));
    }
  }

  // Columns: each as wide as its widest node, each gap as its labels need.
  const layers = Math.max(0, ...nodes.map(n => n.layer)) + 1;
  const columns: IGraphNode[][] = Array.from({ length: layers }, () => []);
  nodes.forEach(n => columns[n.layer].push(n));
  const room = sizes.maxGap - 16;
  const labelOf = (names: string[]) => {
    let text = names.join(', ');
    if (measure(text, 'label') <= room) {
      return text;
    }
    while (text.length > 1 && measure(`${text}…`, 'label') > room) {
      text = text.slice(0, -1);
    }
    return `${text}…`;
  };
  const gaps = columns.map((_, l) => {
    const widest = Math.max(
      0,
      ...[...values.values()]
        .filter(v => layer.get(v.from) === l && layer.get(v.to) === l + 1)
        .map(v => measure(labelOf(v.names), 'label') + 16)
    );
    return Math.min(sizes.maxGap, Math.max(sizes.minGap, Math.ceil(widest)));
  });
  const rows = Math.max(...columns.map(c => c.length));
  const row = sizes.nodeHeight + sizes.rowGap;
  let x = sizes.pad;
  columns.forEach((column, l) => {
    const width = Math.max(...column.map(n => n.width));
    const top = sizes.pad + ((rows - column.length) * row) / 2;
    column.forEach((n, i) => {
      n.x = x + (width - n.width) / 2;
      n.y = top + i * row;
    });
    x += width + (l < layers - 1 ? gaps[l] : 0);
  });

  // A value that skips a column (a step that also takes an earlier step's value) arcs over
  // the boxes between, not through them; the shorter arcs lower, each its own height, with
  // room for all of them above the top row.
  const span = (v: { from: string; to: string }) =>
    (layer.get(v.to) as number) - (layer.get(v.from) as number);
  const arcs = [...values.values()]
    .filter(v => span(v) > 1)
    .sort(
      (a, b) =>
        span(a) - span(b) || (layer.get(a.from) as number) - (layer.get(b.from) as number)
    );
  const level = new Map(arcs.map((v, i) => [v, i]));
  const lift = arcs.length ? sizes.arcRise + 12 + (arcs.length - 1) * sizes.arcStep : 0;
  nodes.forEach(n => (n.y += lift));
  const rowTop = sizes.pad + lift;

  const at = new Map(nodes.map(n => [n.key, n]));
  const edges: IGraphEdge[] = [...values.values()].map(v => {
    const a = at.get(v.from) as IGraphNode;
    const b = at.get(v.to) as IGraphNode;
    const x1 = a.x + a.width;
    const y1 = a.y + a.height / 2;
    const x2 = b.x;
    const y2 = b.y + b.height / 2;
    const mid = (x1 + x2) / 2;
    let path = `M ${x1} ${y1} L ${x2} ${y2}`;
    let labelY = (y1 + y2) / 2 - 5;
    if (level.has(v)) {
      // The curve's highest point (half way) is at `peak`, above every box of the top row.
      const peak = rowTop - sizes.arcRise - (level.get(v) as number) * sizes.arcStep;
      const top = (peak - 0.125 * (y1 + y2)) / 0.75;
      path = `M ${x1} ${y1} C ${x1 + 24} ${top}, ${x2 - 24} ${top}, ${x2} ${y2}`;
      labelY = peak - 3;
    } else if (y1 !== y2) {
      path = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
    }
    return {
      from: v.from,
      to: v.to,
      label: labelOf(v.names),
      title: v.names.join(', '),
      path,
      labelX: mid,
      labelY
    };
  });
  return {
    nodes,
    edges,
    width: Math.ceil(x + sizes.pad),
    height: Math.ceil(lift + sizes.pad * 2 + rows * row - sizes.rowGap)
  };
}
