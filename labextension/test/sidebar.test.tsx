/**
 * The sidebar's DOM, which the browser tests (tests/test_browser.py) select on: class
 * names, data-snapshot, texts and button labels. Rendered with react-dom in jsdom against
 * the fake server; JupyterLab's UI packages are stand-ins (test/stubs).
 */
import * as React from 'react';
import { act } from 'react';
import { createRoot, Root } from 'react-dom/client';

import { SidebarModel } from '../src/model';
import { Sidebar } from '../src/panel';
import { DOWN, FakeServer, service, summary, UP } from './fakeServer';
import { ui } from './stubs/apputils';

(globalThis as any).IS_REACT_ACT_ENVIRONMENT = true;

const K8S = summary('k8s1', {
  name: 'train',
  status: 'failed',
  notebook: '/home/me/nb/train.ipynb',
  notebook_path: 'nb/train.ipynb',
  env_image: 'mlcontainer-env:k8s1',
  image_size: 512_300_000
});
const OLD = summary('old1', { name: null });
const SERVED = summary('sv1', {
  name: 'ocr',
  status: 'serving',
  notebook: 'nb/serve.ipynb',
  finished: null,
  duration: null
});

function server(): FakeServer {
  return new FakeServer()
    .on('GET status', { body: UP })
    .on('GET running', {
      body: { items: [{ id: 'r1', container: 'c1', name: 'hello', state: 'running' }] }
    })
    .on('GET services', { body: { items: [] } })
    .on('GET snapshots', { body: { items: [K8S, OLD], total: 2, limit: 50, offset: 0 } })
    .on('GET snapshots/k8s1', {
      body: {
        ...K8S,
        backend: 'kubernetes',
        target: { context: 'kind-dev', namespace: 'ml' },
        lock: [{ name: 'numpy', version: '2.1.3' }],
        timings: { build: 30.4 }
      }
    })
    .on('GET snapshots/k8s1/logs', {
      body: { id: 'k8s1', logs: 'epoch 11', stdout: '', stderr: '' }
    })
    .on('GET snapshots/old1', { body: OLD })
    .on('GET snapshots/old1/logs', {
      body: { id: 'old1', logs: '', stdout: '', stderr: '' }
    })
    .install();
}

let root: Root;
let el: HTMLElement;
let model: SidebarModel;
const executed: unknown[][] = [];
const app: any = {
  commands: {
    execute: (...args: unknown[]) => {
      executed.push(args);
      return Promise.resolve();
    }
  }
};

/** Render the panel, and again whenever the model changes, as MlcSidebar does. */
async function show(refresh = true): Promise<void> {
  if (refresh) {
    await model.refresh();
  }
  el = document.createElement('div');
  document.body.appendChild(el);
  const render = () => root.render(<Sidebar model={model} app={app} />);
  act(() => {
    root = createRoot(el);
    render();
  });
  model.changed.connect(() => act(render));
}

/** Let answers from the fake server arrive and React apply them. */
async function settle(): Promise<void> {
  await act(async () => {
    for (let i = 0; i < 5; i++) {
      await new Promise(resolve => setTimeout(resolve, 0));
    }
  });
}

function texts(selector: string, scope: ParentNode = el): string[] {
  return Array.from(scope.querySelectorAll(selector)).map(e => e.textContent ?? '');
}

function button(scope: ParentNode, label: string): HTMLButtonElement {
  const found = Array.from(scope.querySelectorAll('button')).find(
    b => b.textContent === label
  );
  if (!found) {
    throw new Error(`no button ${label}`);
  }
  return found;
}

/** Open a snapshot's details and wait for its record and logs. */
async function open(id: string): Promise<HTMLElement> {
  const row = el.querySelector(`li[data-snapshot="${id}"]`) as HTMLElement;
  act(() => (row.querySelector('button.mlc-RowToggle') as HTMLElement).click());
  await settle();
  return row.querySelector('.mlc-Details') as HTMLElement;
}

/** The value of a details line by its label. */
function field(details: HTMLElement, label: string): string | undefined {
  const dt = Array.from(details.querySelectorAll('dt')).find(
    d => d.textContent === label
  );
  return dt?.nextElementSibling?.textContent ?? undefined;
}

beforeEach(() => {
  ui.reset();
  executed.length = 0;
  model = new SidebarModel();
});

afterEach(() => {
  act(() => root.unmount());
  el.remove();
  model.dispose();
});

it('lists running containers and snapshots with their counts', async () => {
  server();
  await show();
  expect(texts('.mlc-SectionTitle .mlc-Count')).toEqual(['1', '2']);
  expect(el.querySelector('section[aria-label="Services"]')).toBeNull(); // none: no section
  const rows = Array.from(el.querySelectorAll('li.mlc-Row[data-snapshot]'));
  expect(rows.map(r => r.getAttribute('data-snapshot'))).toEqual(['r1', 'k8s1', 'old1']);
  expect(el.querySelector('li.mlc-RunningRow[data-snapshot="r1"]')).not.toBeNull();
  const train = el.querySelector('li[data-snapshot="k8s1"]') as HTMLElement;
  expect(train.textContent).toContain('train.ipynb · 10.0s · 512.3 MB');
  expect(train.querySelector('.mlc-Badge')?.className).toBe('mlc-Badge mlc-bad');
  // A snapshot without a name shows its id.
  expect(texts('li[data-snapshot="old1"] .mlc-Name')).toEqual(['old1']);
});

it('shows details: fields, where it ran, timings, packages and logs', async () => {
  server();
  await show();
  const details = await open('k8s1');
  expect(field(details, 'Id')).toBe('k8s1');
  expect(field(details, 'Status')).toBe('failed (exit 0)');
  expect(field(details, 'Ran on')).toBe('kubernetes (context kind-dev, namespace ml)');
  expect(field(details, 'build')).toBe('30.4s');
  expect(texts('.mlc-Pkg', details)).toEqual(['numpy==2.1.3']);
  expect(texts('pre.mlc-Log', details)).toEqual(['epoch 11']);
  expect(texts('.mlc-Actions button', details).map(t => t.trim())).toEqual([
    'Re-run',
    'Export',
    'Copy image tag',
    'Open notebook',
    'Delete'
  ]);
});

it('shows a record without a backend as run on docker', async () => {
  server();
  await show();
  const details = await open('old1');
  expect(field(details, 'Ran on')).toBe('docker');
  expect(texts('.mlc-Hint', details)).toEqual(['None recorded.', 'No output.']);
});

it('shows the data a cell read and wrote, the first 20 written files', async () => {
  const files: Record<string, [number, string]> = {};
  for (let i = 0; i < 23; i++) {
    files[`part-${String(i).padStart(2, '0')}.csv`] = [1000, `sha256:${i}`];
  }
  server().on('GET snapshots/k8s1', {
    body: {
      ...K8S,
      mounts: [
        {
          source: '/home/me/data',
          target: '/work/data',
          mode: 'ro',
          digest: 'sha256:0123456789abcdef0123',
          count: 3,
          size: 1_234_567
        },
        {
          source: '/home/me/out',
          target: '/work/out',
          mode: 'rw',
          digest: 'sha256:fedcba9876543210',
          count: 23,
          size: 23_000
        }
      ],
      written: { '/work/out': files }
    }
  });
  await show();
  const details = await open('k8s1');
  const dataIn = details.querySelector('.mlc-DataIn') as HTMLElement;
  expect(texts('.mlc-SubTitle', dataIn)).toEqual(['Data in']);
  expect(texts('li', dataIn)).toEqual([
    '/work/data (ro, 1.2 MB, 3 files)',
    '/work/out (rw, 23.0 kB, 23 files)'
  ]);
  expect(dataIn.querySelector('li')?.getAttribute('title')).toBe(
    'from /home/me/data, digest 0123456789ab'
  );
  const dataOut = details.querySelector('.mlc-DataOut') as HTMLElement;
  expect(texts('.mlc-SubTitle', dataOut)).toEqual(['Data out']);
  const written = texts('li', dataOut);
  expect(written).toHaveLength(20);
  expect(written[0]).toBe('/work/out/part-00.csv (1.0 kB)');
  expect(written[19]).toBe('/work/out/part-19.csv (1.0 kB)');
  expect(texts('.mlc-Hint', dataOut)).toEqual(['and 3 more']);
});

it('shows no data blocks for a record without mounts or written files', async () => {
  server();
  await show();
  for (const id of ['k8s1', 'old1']) {
    const details = await open(id);
    expect(details.querySelector('.mlc-DataIn')).toBeNull();
    expect(details.querySelector('.mlc-DataOut')).toBeNull();
    expect(texts('.mlc-SubTitle', details)).not.toContain('Data in');
    expect(texts('.mlc-SubTitle', details)).not.toContain('Data out');
  }
});

it("re-runs, showing the server's message where the user clicked", async () => {
  const fake = server().on('POST snapshots/k8s1/rerun', {
    status: 501,
    body: { message: 'This snapshot cannot be rerun: no spec.' }
  });
  await show();
  const details = await open('k8s1');
  act(() => button(details, 'Re-run').click());
  await settle();
  expect(texts('.mlc-Notice', details)).toEqual([
    'This snapshot cannot be rerun: no spec.'
  ]);
  expect(fake.log).toContain('POST snapshots/k8s1/rerun');
});

it('copies the image tag and opens the notebook', async () => {
  server();
  await show();
  const details = await open('k8s1');
  act(() => button(details, 'Copy image tag').click());
  act(() => button(details, 'Open notebook').click());
  expect(ui.copied).toEqual(['mlcontainer-env:k8s1']);
  expect(executed).toEqual([['docmanager:open', { path: 'nb/train.ipynb' }]]);
});

it('deletes a snapshot after confirming', async () => {
  const fake = server().on('DELETE snapshots/old1', { body: { removed: OLD } });
  await show();
  const details = await open('old1');
  fake.on('GET snapshots', { body: { items: [K8S], total: 1, limit: 50, offset: 0 } });
  act(() => button(details, 'Delete').click());
  await settle();
  expect(ui.dialogs[0].body).toBe(
    'Delete old1: its record and files. This cannot be undone.'
  );
  expect(fake.log).toContain('DELETE snapshots/old1');
  expect(el.querySelector('li[data-snapshot="old1"]')).toBeNull();
});

it('stops a running container', async () => {
  const fake = server().on('POST running/r1/stop', { body: { stopped: [] } });
  await show();
  act(() => button(el, 'Stop').click());
  await settle();
  expect(fake.log).toContain('POST running/r1/stop');
  expect(ui.notifications).toEqual([['success', 'Stopped hello.']]);
});

/** The fake server with a service "ocr" (snapshot sv1), whose container also runs. */
function serving(extra: Record<string, unknown> = {}): FakeServer {
  return server()
    .on('GET services', { body: { items: [service(extra)] } })
    .on('GET running', {
      body: {
        items: [
          { id: 'r1', container: 'c1', name: 'hello', state: 'running' },
          {
            id: 'sv1',
            container: 'c2',
            name: 'ocr',
            state: 'running',
            snapshot_status: 'serving'
          }
        ]
      }
    })
    .on('GET snapshots', {
      body: { items: [SERVED, K8S, OLD], total: 3, limit: 50, offset: 0 }
    })
    .on('GET snapshots/sv1', { body: { ...SERVED, service: service() } })
    .on('GET snapshots/sv1/logs', {
      body: { id: 'sv1', logs: '', stdout: '', stderr: '' }
    });
}

it('lists services with their URL, snapshot and what their server says', async () => {
  serving();
  await show();
  expect(texts('section[aria-label] > .mlc-SectionTitle')).toEqual([
    'Running 1',
    'Services 1',
    'Snapshots 3'
  ]);
  // The service's container is listed with the service, not with the running cells.
  expect(el.querySelector('li.mlc-RunningRow[data-snapshot="sv1"]')).toBeNull();
  const row = el.querySelector('li.mlc-ServiceRow[data-snapshot="sv1"]') as HTMLElement;
  expect(row.getAttribute('data-service')).toBe('ocr');
  expect(texts('.mlc-Name', row)).toEqual(['ocr']);
  expect(row.querySelector('.mlc-Badge')?.className).toBe('mlc-Badge mlc-serving');
  const link = row.querySelector('a.mlc-Url') as HTMLAnchorElement;
  expect(link.href).toBe('http://127.0.0.1:8123/');
  expect(link.textContent).toBe('http://127.0.0.1:8123');
  expect(link.target).toBe('_blank');
  expect(texts('.mlc-RowMeta', row)[1]).toBe(
    'snapshot sv1 · predict(x) · 8 requests · 1 error · up 5m02s'
  );
  // In the snapshot list, serving is a status of its own.
  const snap = el.querySelector('li.mlc-Row[data-snapshot="sv1"]:not(.mlc-ServiceRow)');
  expect(snap?.querySelector('.mlc-Badge')?.className).toBe('mlc-Badge mlc-serving');
  expect(snap?.textContent).toContain('serving for');
});

it('says when a service does not answer, and why', async () => {
  serving({
    answering: false,
    message: 'No answer to GET /metadata within 1 s.',
    requests: null,
    errors: null,
    uptime: null,
    signature: null
  });
  await show();
  const row = el.querySelector('li.mlc-ServiceRow') as HTMLElement;
  expect(row.classList.contains('mlc-not-answering')).toBe(true);
  expect(texts('.mlc-Badge', row)).toEqual(['not answering']);
  expect(texts('.mlc-RowMeta', row)).toEqual([
    'http://127.0.0.1:8123',
    'snapshot sv1 · predict',
    'No answer to GET /metadata within 1 s.'
  ]);
});

it('says a service is stopping once a stop was asked for', async () => {
  serving({
    answering: false,
    stop_requested: true,
    message: 'Nothing listens at its URL (connection refused).',
    requests: null,
    uptime: null
  });
  await show();
  const row = el.querySelector('li.mlc-ServiceRow') as HTMLElement;
  expect(texts('.mlc-Badge', row)).toEqual(['stopping']);
  expect(row.querySelector('.mlc-Dot')?.className).toBe('mlc-Dot mlc-Dot-off');
  expect(row.querySelector('.mlc-bad-text')).toBeNull(); // not an error: it was asked for
});

it('shows a URL that is not http(s) as text, not as a link', async () => {
  serving({ url: 'javascript:alert(1)', answering: false, message: 'no http URL' });
  await show();
  const row = el.querySelector('li.mlc-ServiceRow') as HTMLElement;
  expect(row.querySelector('a')).toBeNull();
  expect(texts('.mlc-RowMeta', row)[0]).toBe('javascript:alert(1)');
});

it("opens a service's snapshot from its id", async () => {
  serving();
  await show();
  const row = el.querySelector('li.mlc-ServiceRow') as HTMLElement;
  act(() => (row.querySelector('button.mlc-SnapshotLink') as HTMLElement).click());
  await settle();
  const snap = el.querySelector('li.mlc-Row[data-snapshot="sv1"]:not(.mlc-ServiceRow)');
  expect(snap?.classList.contains('mlc-open')).toBe(true);
  expect(snap?.querySelector('.mlc-Details dd.mlc-Mono')?.textContent).toBe('sv1');
});

it('stops a service', async () => {
  const fake = serving().on('POST running/sv1/stop', { body: { stopped: [] } });
  await show();
  const row = el.querySelector('li.mlc-ServiceRow') as HTMLElement;
  fake.on('GET services', { body: { items: [] } });
  act(() => button(row, 'Stop').click());
  await settle();
  expect(fake.log).toContain('POST running/sv1/stop');
  expect(ui.notifications).toEqual([['success', 'Stopped ocr.']]);
  expect(el.querySelector('section[aria-label="Services"]')).toBeNull();
});

it('tells a new user how to start, also while the engine is down', async () => {
  new FakeServer()
    .on('GET status', { body: DOWN })
    .on('GET snapshots', { body: { items: [], total: 0, limit: 50, offset: 0 } })
    .install();
  await show();
  expect(texts('.mlc-Banner strong')).toEqual([
    'Docker engine is down: run mlcontainer doctor --fix'
  ]);
  expect(el.querySelector('.mlc-Empty')?.textContent).toContain(
    '%load_ext mlcontainer_magics'
  );
  expect(el.querySelector('section[aria-label="Running"]')).toBeNull();
});

it('says the server extension is missing, and shows nothing else', async () => {
  new FakeServer().install();
  await show();
  expect(el.querySelector('.mlc-Banner[role="alert"] strong')?.textContent).toBe(
    'Server extension not installed.'
  );
  expect(el.querySelector('.mlc-Section')).toBeNull();
  expect(el.querySelector('.mlc-Empty')).toBeNull();
});

it('says it is loading before the first answer', async () => {
  await show(false);
  expect(texts('.mlc-Hint')[0]).toBe('Loading…');
});

/** k8s1 ("train") took old1's value `x`; old1 took `data` from the notebook. */
const LINEAGE = {
  snapshot: 'k8s1',
  steps: ['old1', 'k8s1'],
  nodes: [
    {
      id: 'old1',
      step: 1,
      name: null,
      status: 'done',
      inputs: ['data'],
      notebook: [{ input: 'data', digest: 'xxh3-128:1a' }]
    },
    { id: 'k8s1', step: 2, name: 'train', status: 'failed', inputs: ['x'], notebook: [] }
  ],
  edges: [{ from: 'old1', to: 'k8s1', output: 'x', input: 'x', digest: 'xxh3-128:2b' }],
  children: [],
  child_edges: []
};

it('shows a lineage graph whose boxes open their snapshot', async () => {
  const fake = server().on('GET lineage/k8s1', { body: LINEAGE });
  await show();
  const details = await open('k8s1');
  expect(texts('.mlc-Lineage > .mlc-SubTitle', details)).toEqual(['Lineage (2 steps)']);
  const nodes = Array.from(details.querySelectorAll('.mlc-GraphNode'));
  expect(nodes.map(n => n.getAttribute('data-node'))).toEqual([
    '@notebook',
    'old1',
    'k8s1'
  ]);
  expect(nodes.map(n => n.textContent)).toEqual([
    'notebook',
    'unnamed1 · old1',
    'train2 · k8s1'
  ]);
  expect(nodes[1].className).toContain('mlc-ok');
  expect(nodes[2].className).toContain('mlc-bad');
  expect(nodes[2].className).toContain('mlc-selected');
  expect(texts('.mlc-GraphEdge text', details)).toEqual(['data', 'x']);
  // A box opens its snapshot's row.
  act(() => (nodes[1] as HTMLElement).click());
  await settle();
  expect(el.querySelector('li[data-snapshot="old1"] .mlc-Details')).not.toBeNull();
  expect(fake.log).toContain('GET lineage/k8s1');
});

it('re-runs and exports the whole pipeline', async () => {
  const fake = server()
    .on('GET lineage/k8s1', { body: LINEAGE })
    .on('POST snapshots/k8s1/rerun', {
      body: {
        id: 'new2',
        rerun_of: 'k8s1',
        status: 'done',
        verified: null,
        problems: [],
        pipeline: { steps: [{}, {}], first_difference: null }
      }
    })
    .on('POST snapshots/k8s1/export', {
      body: { path: 'mlcontainer-exports/train-pipeline-k8s1-1', files: ['run.sh'] }
    });
  await show();
  const details = await open('k8s1');
  act(() => button(details, 'Re-run pipeline').click());
  await settle();
  expect(texts('.mlc-Notice', details)).toEqual([
    'Re-run pipeline: 2 steps ran again, the last as new2, done'
  ]);
  act(() => button(details, 'Export pipeline').click());
  await settle();
  expect(texts('.mlc-Notice', details)).toEqual([
    'Export pipeline: written to mlcontainer-exports/train-pipeline-k8s1-1'
  ]);
  const posts = fake.calls.filter(c => c.method === 'POST');
  expect(posts.map(c => [c.path, c.body])).toEqual([
    ['snapshots/k8s1/rerun', { pipeline: true }],
    ['snapshots/k8s1/export', { pipeline: true }]
  ]);
});

it('shows no graph for a snapshot that took nothing from another', async () => {
  server().on('GET lineage/k8s1', {
    body: { ...LINEAGE, steps: ['k8s1'], nodes: [LINEAGE.nodes[1]], edges: [] }
  });
  await show();
  const details = await open('k8s1');
  expect(details.querySelector('.mlc-Lineage')).toBeNull();
  expect(texts('button', details)).not.toContain('Re-run pipeline');
});

it('shows a running map as one entry with its items, and a map snapshot as a map', async () => {
  const MAP = summary('map1', {
    name: 'sweep',
    status: 'running',
    finished: null,
    duration: null,
    map: { name: 'shards', count: null, failed: null, parallel: 4 }
  });
  const DONE = summary('map0', {
    name: 'sweep',
    status: 'failed',
    map: { name: 'shards', count: 12, failed: 2, parallel: 4 }
  });
  server()
    .on('GET running', {
      body: {
        items: [
          {
            id: 'map1',
            container: 'c9',
            name: 'sweep',
            state: 'running',
            status: 'Up 3 seconds',
            items: 4,
            snapshot_status: 'running'
          }
        ]
      }
    })
    .on('GET snapshots', {
      body: { items: [MAP, DONE, K8S], total: 3, limit: 50, offset: 0 }
    });
  await show();
  const running = el.querySelectorAll('li.mlc-RunningRow');
  expect(running).toHaveLength(1);
  expect(running[0].querySelector('.mlc-RowMeta')?.textContent).toContain(
    'map · 4 items running · Up 3 seconds'
  );
  expect(texts('li[data-snapshot="map0"] .mlc-MapTag')).toEqual([
    'map · 12 items · 2 failed'
  ]);
  expect(
    texts('li.mlc-Row:not(.mlc-RunningRow)[data-snapshot="map1"] .mlc-MapTag')
  ).toEqual(['map over shards']);
  expect(el.querySelector('li[data-snapshot="k8s1"] .mlc-MapTag')).toBeNull();
});
