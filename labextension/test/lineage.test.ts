/** The lineage graph's layout (src/lineage.ts): pure, boxes and lines in pixels. */
import { ILineage, ILineageEdge, ILineageNode } from '../src/api';
import { hasLineage, layoutLineage, NOTEBOOK_KEY, SIZES } from '../src/lineage';

function step(id: string, n: number, extra: Partial<ILineageNode> = {}): ILineageNode {
  return {
    id,
    step: n,
    name: `step${n}`,
    status: 'done',
    inputs: [],
    notebook: [],
    ...extra
  };
}

function edge(from: string, to: string, output: string, input = output): ILineageEdge {
  return { from, to, output, input, digest: `xxh3-128:${output}` };
}

/** ocr <- notebook image; detect <- ocr text; translate <- detect doc. */
const CHAIN: ILineage = {
  snapshot: 'cccccc333333',
  steps: ['aaaaaa111111', 'bbbbbb222222', 'cccccc333333'],
  nodes: [
    step('aaaaaa111111', 1, {
      name: 'ocr',
      notebook: [{ input: 'image', digest: 'xxh3-128:1a' }]
    }),
    step('bbbbbb222222', 2, { name: 'detect-language' }),
    step('cccccc333333', 3, { name: 'translate', status: 'failed' })
  ],
  edges: [
    edge('bbbbbb222222', 'cccccc333333', 'doc'),
    edge('aaaaaa111111', 'bbbbbb222222', 'text')
  ],
  children: [],
  child_edges: []
};

const byKey = (layout: ReturnType<typeof layoutLineage>) =>
  Object.fromEntries(layout.nodes.map(n => [n.key, n]));

it('lays a chain out left to right in step order, after the notebook', () => {
  const layout = layoutLineage(CHAIN);
  expect(layout.nodes.map(n => [n.key, n.kind, n.layer, n.label, n.step])).toEqual([
    [NOTEBOOK_KEY, 'notebook', 0, 'notebook', null],
    ['aaaaaa111111', 'step', 1, 'ocr', 1],
    ['bbbbbb222222', 'step', 2, 'detect-language', 2],
    ['cccccc333333', 'step', 3, 'translate', 3]
  ]);
  const xs = layout.nodes.map(n => n.x);
  expect([...xs].sort((a, b) => a - b)).toEqual(xs);
  // One row: every box at the same height, no box overlapping the next.
  expect(new Set(layout.nodes.map(n => n.y)).size).toBe(1);
  layout.nodes.slice(1).forEach((n, i) => {
    const before = layout.nodes[i];
    expect(n.x).toBeGreaterThanOrEqual(before.x + before.width + SIZES.minGap);
  });
  const last = layout.nodes[layout.nodes.length - 1];
  expect(layout.width).toBe(Math.ceil(last.x + last.width + SIZES.pad));
  expect(layout.height).toBe(SIZES.nodeHeight + 2 * SIZES.pad);
});

it('marks the shown snapshot, short ids and statuses', () => {
  const nodes = byKey(layoutLineage(CHAIN));
  expect(nodes['cccccc333333'].selected).toBe(true);
  expect(nodes['aaaaaa111111'].selected).toBe(false);
  expect(nodes['cccccc333333'].shortId).toBe('cccccc');
  expect(nodes['cccccc333333'].status).toBe('failed');
  expect(nodes[NOTEBOOK_KEY].shortId).toBe('');
});

it('draws values as edges, named by the value, straight along a row', () => {
  const layout = layoutLineage(CHAIN);
  expect(layout.edges.map(e => [e.from, e.to, e.label])).toEqual([
    [NOTEBOOK_KEY, 'aaaaaa111111', 'image'],
    ['bbbbbb222222', 'cccccc333333', 'doc'],
    ['aaaaaa111111', 'bbbbbb222222', 'text']
  ]);
  const nodes = byKey(layout);
  const doc = layout.edges[1];
  const from = nodes['bbbbbb222222'];
  const to = nodes['cccccc333333'];
  const y = from.y + from.height / 2;
  expect(doc.path).toBe(`M ${from.x + from.width} ${y} L ${to.x} ${y}`);
  expect(doc.labelX).toBe((from.x + from.width + to.x) / 2);
  expect(doc.labelY).toBeLessThan(y); // above its line
});

it('widens a gap for a long value name, and shortens one that is too long', () => {
  const long: ILineage = {
    ...CHAIN,
    edges: [
      edge('aaaaaa111111', 'bbbbbb222222', 'extracted_text'),
      edge(
        'bbbbbb222222',
        'cccccc333333',
        'a_very_long_value_name_that_cannot_fit',
        'doc'
      )
    ]
  };
  const layout = layoutLineage(long);
  const nodes = byKey(layout);
  const gap1 =
    nodes['bbbbbb222222'].x - (nodes['aaaaaa111111'].x + nodes['aaaaaa111111'].width);
  expect(gap1).toBeGreaterThan(SIZES.minGap);
  expect(gap1).toBeGreaterThanOrEqual('extracted_text'.length * SIZES.charWidth);
  const gap2 =
    nodes['cccccc333333'].x - (nodes['bbbbbb222222'].x + nodes['bbbbbb222222'].width);
  expect(gap2).toBeLessThanOrEqual(SIZES.maxGap);
  const cut = layout.edges.find(e => e.to === 'cccccc333333') as any;
  expect(cut.label.endsWith('…')).toBe(true);
  expect(cut.label.length * SIZES.charWidth).toBeLessThanOrEqual(SIZES.maxGap);
  expect(cut.title).toBe('a_very_long_value_name_that_cannot_fit → doc');
});

it('sizes a box to its name, within bounds', () => {
  const named = (name: string): ILineage => ({
    ...CHAIN,
    nodes: CHAIN.nodes.map(n => (n.id === 'cccccc333333' ? { ...n, name } : n))
  });
  const width = (name: string) => byKey(layoutLineage(named(name)))['cccccc333333'].width;
  expect(width('a')).toBeGreaterThanOrEqual(SIZES.minStepWidth); // its id line fits
  expect(width('detect-language')).toBeGreaterThanOrEqual(15 * SIZES.nameCharWidth);
  expect(width('x'.repeat(80))).toBe(SIZES.maxStepWidth);
  expect(width('detect-language')).toBeGreaterThan(width('ocr'));
});

it('sizes boxes and gaps by measured text when it can be measured', () => {
  const wide = (text: string, font: string) => text.length * (font === 'label' ? 10 : 9);
  const nodes = byKey(layoutLineage(CHAIN, SIZES, wide));
  const ocr = nodes['aaaaaa111111'];
  const detect = nodes['bbbbbb222222'];
  expect(detect.width).toBe('detect-language'.length * 9 + SIZES.nodePad);
  expect(ocr.width).toBe('1 · aaaaaa'.length * 9 + SIZES.nodePad); // its id line is longer
  expect(detect.x - (ocr.x + ocr.width)).toBe(Math.max(SIZES.minGap, 4 * 10 + 16)); // "text"
});

it('puts a step with two parents one column after the later one (a fan-in)', () => {
  const fanIn: ILineage = {
    snapshot: 'dddddd444444',
    steps: ['aaaaaa111111', 'bbbbbb222222', 'dddddd444444'],
    nodes: [step('aaaaaa111111', 1), step('bbbbbb222222', 2), step('dddddd444444', 3)],
    edges: [
      edge('aaaaaa111111', 'dddddd444444', 'x'),
      edge('bbbbbb222222', 'dddddd444444', 'y'),
      edge('bbbbbb222222', 'dddddd444444', 'z')
    ],
    children: [],
    child_edges: []
  };
  const layout = layoutLineage(fanIn);
  const nodes = byKey(layout);
  expect(NOTEBOOK_KEY in nodes).toBe(false); // no value came from the notebook
  expect([1, 2, 3].map(i => nodes[fanIn.steps[i - 1]].layer)).toEqual([0, 0, 1]);
  // The two parents stacked in step order, the child centred on them.
  const [a, b, d] = fanIn.steps.map(id => nodes[id]);
  expect(a.x).toBe(b.x);
  expect(b.y).toBe(a.y + SIZES.nodeHeight + SIZES.rowGap);
  expect(d.y).toBe((a.y + b.y) / 2);
  // Two values between the same two steps are one edge with both names, curved.
  const yz = layout.edges.find(e => e.from === 'bbbbbb222222') as any;
  expect(yz.label).toBe('y, z');
  expect(yz.path).toContain(' C ');
  expect(layout.edges).toHaveLength(2);
});

it('arcs a value that skips a column over the boxes between', () => {
  const skip: ILineage = {
    ...CHAIN,
    edges: [...CHAIN.edges, edge('aaaaaa111111', 'cccccc333333', 'text')]
  };
  const layout = layoutLineage(skip);
  const nodes = byKey(layout);
  // Still a chain: translate one column after detect-language, all on one row.
  expect(
    ['aaaaaa111111', 'bbbbbb222222', 'cccccc333333'].map(k => nodes[k].layer)
  ).toEqual([1, 2, 3]);
  const arc = layout.edges.find(
    e => e.from === 'aaaaaa111111' && e.to === 'cccccc333333'
  ) as any;
  const top = nodes['bbbbbb222222'].y;
  const lift = SIZES.arcRise + 12;
  expect(top).toBe(SIZES.pad + lift); // room above the row
  expect(arc.path).toContain(' C ');
  expect(arc.labelY).toBe(top - SIZES.arcRise - 3); // its name above the box it passes over
  expect(arc.labelY).toBeGreaterThan(8); // and inside the drawing
  expect(layout.height).toBe(lift + SIZES.nodeHeight + 2 * SIZES.pad);
  // Another, longer one, from the notebook: higher, and more room for it.
  const two = layoutLineage({
    ...skip,
    nodes: skip.nodes.map(n =>
      n.id === 'cccccc333333'
        ? { ...n, notebook: [{ input: 'glossary', digest: null }] }
        : n
    )
  });
  const [short, long] = ['aaaaaa111111', NOTEBOOK_KEY].map(
    k => two.edges.find(e => e.from === k && e.to === 'cccccc333333') as any
  );
  expect(long.labelY).toBe(short.labelY - SIZES.arcStep);
  expect(two.height).toBe(layout.height + SIZES.arcStep);
  // The straight ones keep their place beside their boxes.
  const doc = layout.edges.find(e => e.label === 'doc') as any;
  expect(doc.path).toContain(' L ');
});

it('shows the snapshots that took the values of a first step after it', () => {
  const first: ILineage = {
    snapshot: 'aaaaaa111111',
    steps: ['aaaaaa111111'],
    nodes: [step('aaaaaa111111', 1, { notebook: [{ input: 'image', digest: null }] })],
    edges: [],
    children: [{ id: 'bbbbbb222222', name: 'detect', status: 'running' }],
    child_edges: [edge('aaaaaa111111', 'bbbbbb222222', 'text')]
  };
  expect(hasLineage(first)).toBe(true);
  const layout = layoutLineage(first);
  expect(layout.nodes.map(n => [n.key, n.kind, n.layer, n.step])).toEqual([
    [NOTEBOOK_KEY, 'notebook', 0, null],
    ['aaaaaa111111', 'step', 1, 1],
    ['bbbbbb222222', 'child', 2, null]
  ]);
  expect(layout.edges.map(e => e.label)).toEqual(['image', 'text']);
});

it('shows a removed parent as such, and needs a value between snapshots for a graph', () => {
  const removed: ILineage = {
    ...CHAIN,
    nodes: [{ id: 'aaaaaa111111', missing: true, step: 1 }, ...CHAIN.nodes.slice(1)]
  };
  const nodes = byKey(layoutLineage(removed));
  expect(nodes['aaaaaa111111'].label).toBe('removed');
  expect(nodes['aaaaaa111111'].missing).toBe(true);
  expect(nodes['aaaaaa111111'].status).toBeNull();
  expect(NOTEBOOK_KEY in nodes).toBe(false); // what it took is not known any more

  const alone: ILineage = {
    snapshot: 'aaaaaa111111',
    steps: ['aaaaaa111111'],
    nodes: [step('aaaaaa111111', 1, { notebook: [{ input: 'x', digest: null }] })],
    edges: [],
    children: [],
    child_edges: []
  };
  expect(hasLineage(alone)).toBe(false);
  expect(hasLineage(null)).toBe(false);
});
