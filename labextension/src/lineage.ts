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
  maxGap: 112,
  pad: 4,
  /** Padding and border inside a box, both sides. */
  nodePad: 16,
  /** Of the bold name and the small id line; estimated, as there is no DOM to measure in. */
  nameCharWidth: 8,
  idCharWidth: 7,
  /** Of the 10px label font. */
  charWidth: 6.2
};

/** Whether a snapshot's lineage is worth a graph: it took values from, or gave values to, another. */
export function hasLineage(lineage: ILineage | null | undefined): boolean {
  return !!lineage && (lineage.edges.length > 0 || lineage.children.length > 0);
}

export const shortId = (id: string): string => id.slice(0, 6);

export function layoutLineage(
  lineage: ILineage,
  sizes: typeof SIZES = SIZES
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
    // The id line reads "3 · 7a7a7a".
    const idLine = (step !== null ? `${step} · ` : '').length + 6;
    const fits = Math.ceil(
      Math.max(label.length * sizes.nameCharWidth, idLine * sizes.idCharWidth) +
        sizes.nodePad
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
  const maxLabel = (sizes.maxGap - 16) / sizes.charWidth;
  const labelOf = (names: string[]) => {
    const text = names.join(', ');
    return text.length <= maxLabel ? text : `${text.slice(0, Math.floor(maxLabel) - 1)}…`;
  };
  const gaps = columns.map((_, l) => {
    const widest = Math.max(
      0,
      ...[...values.values()]
        .filter(v => layer.get(v.from) === l && layer.get(v.to) === l + 1)
        .map(v => labelOf(v.names).length * sizes.charWidth + 16)
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

  const at = new Map(nodes.map(n => [n.key, n]));
  const edges: IGraphEdge[] = [...values.values()].map(v => {
    const a = at.get(v.from) as IGraphNode;
    const b = at.get(v.to) as IGraphNode;
    const x1 = a.x + a.width;
    const y1 = a.y + a.height / 2;
    const x2 = b.x;
    const y2 = b.y + b.height / 2;
    const mid = (x1 + x2) / 2;
    const path =
      y1 === y2
        ? `M ${x1} ${y1} L ${x2} ${y2}`
        : `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
    return {
      from: v.from,
      to: v.to,
      label: labelOf(v.names),
      title: v.names.join(', '),
      path,
      labelX: mid,
      labelY: (y1 + y2) / 2 - 5
    };
  });
  return {
    nodes,
    edges,
    width: Math.ceil(x + sizes.pad),
    height: Math.ceil(sizes.pad * 2 + rows * row - sizes.rowGap)
  };
}
