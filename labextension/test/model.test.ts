import { ApiError, api } from '../src/api';
import { PAGE, POLL_MS, SidebarModel } from '../src/model';
import { DOWN, FakeServer, page, service, summary, UP } from './fakeServer';

const RUNNING = {
  id: 'r1',
  container: 'c1',
  container_name: 'mlc-r1',
  name: 'train',
  namespace: null,
  image: 'mlcontainer-env:r1',
  state: 'running',
  status: 'Up 3 seconds',
  started: null
};

/** A server whose routes all answer: engine up, one running run, three snapshots. */
function healthy(): FakeServer {
  return new FakeServer()
    .on('GET status', { body: UP })
    .on('GET running', { body: { items: [RUNNING] } })
    .on('GET services', { body: { items: [] } })
    .on('GET snapshots', { body: page(3, 3) })
    .install();
}

function ids(model: SidebarModel): string[] {
  return model.snapshots.map(s => s.id);
}

let model: SidebarModel;

beforeEach(() => {
  model = new SidebarModel();
});

afterEach(() => {
  model.dispose();
  jest.useRealTimers();
});

describe('SidebarModel: loading', () => {
  it('starts loading, with nothing listed and no problem', () => {
    expect(model.loading).toBe(true);
    expect(model.problem).toBeNull();
    expect(model.snapshots).toEqual([]);
    expect(model.total).toBe(0);
    expect(model.isPolling).toBe(false);
  });

  it('loads status, running containers and the first page of snapshots', async () => {
    const server = healthy();
    let changes = 0;
    model.changed.connect(() => (changes += 1));
    await model.refresh();
    expect(server.log[0]).toBe('GET status');
    expect(server.log.slice(1).sort()).toEqual([
      'GET running',
      'GET services',
      `GET snapshots?limit=${PAGE}&offset=0`
    ]);
    expect(model.loading).toBe(false);
    expect(model.problem).toBeNull();
    expect(model.status?.version).toBe('0.1.0');
    expect(model.running.map(r => r.id)).toEqual(['r1']);
    expect(ids(model)).toEqual(['s0', 's1', 's2']);
    expect(model.total).toBe(3);
    expect(changes).toBeGreaterThan(0);
  });

  it('takes a 404 as the server extension not being installed, and asks no more', async () => {
    const server = new FakeServer().install(); // no routes: every answer is 404
    await model.refresh();
    expect(model.problem).toEqual({ kind: 'no-extension' });
    expect(server.log).toEqual(['GET status']);
    expect(model.loading).toBe(false);
  });

  it('lists snapshots while the engine is down, but not running containers', async () => {
    const server = healthy().on('GET status', { body: DOWN });
    await model.refresh();
    expect(model.problem).toEqual({
      kind: 'engine-down',
      message: 'Cannot connect to the Docker daemon'
    });
    expect(server.log).not.toContain('GET running');
    expect(model.running).toEqual([]);
    expect(ids(model)).toEqual(['s0', 's1', 's2']);
  });

  it('takes a 503 from running as the engine being down', async () => {
    healthy().on('GET running', { status: 503, body: { message: 'engine is gone' } });
    await model.refresh();
    expect(model.problem).toEqual({ kind: 'engine-down', message: 'engine is gone' });
    expect(model.running).toEqual([]);
  });

  it('shows another failure of running by the list, not as a problem', async () => {
    healthy().on('GET running', { status: 500, body: { message: 'boom' } });
    await model.refresh();
    expect(model.runningError).toBe('boom');
    expect(model.problem).toBeNull();
    expect(model.total).toBe(3);
  });

  it('reports a failing snapshot list, and clears it once the list loads', async () => {
    const server = healthy().on('GET snapshots', {
      status: 500,
      body: { message: 'database is locked' }
    });
    await model.refresh();
    expect(model.problem).toEqual({ kind: 'error', message: 'database is locked' });
    server.on('GET snapshots', { body: page(1, 1) });
    await model.refreshSnapshots();
    expect(model.problem).toBeNull();
    expect(ids(model)).toEqual(['s0']);
  });

  it('says so when the Jupyter server cannot be reached', async () => {
    new FakeServer().unreachable().install();
    await model.refresh();
    expect(model.problem?.kind).toBe('error');
    expect(model.problem).toHaveProperty(
      'message',
      expect.stringMatching(/^Cannot reach the Jupyter server/)
    );
  });
});

describe('SidebarModel: pages', () => {
  it('appends the next page, without rows it already has', async () => {
    const server = healthy().on('GET snapshots', { body: page(PAGE, 120) });
    await model.refresh();
    expect(model.snapshots).toHaveLength(PAGE);
    // A run recorded meanwhile shifts the list: the next page repeats the last row.
    server.on('GET snapshots', ({ query }) => ({
      body: page(PAGE, 121, Number(query.offset) - 1)
    }));
    await model.loadMore();
    expect(server.log).toContain(`GET snapshots?limit=${PAGE}&offset=${PAGE}`);
    expect(model.snapshots).toHaveLength(2 * PAGE - 1);
    expect(new Set(ids(model)).size).toBe(model.snapshots.length);
    expect(model.total).toBe(121);
  });

  it('reloads as many rows as are shown, at least a page', async () => {
    const server = healthy().on('GET snapshots', ({ query }) => {
      const offset = Number(query.offset);
      return { body: page(Math.min(Number(query.limit), 120 - offset), 120, offset) };
    });
    await model.refresh();
    await model.loadMore();
    await model.loadMore();
    expect(model.snapshots).toHaveLength(120);
    await model.refreshSnapshots();
    expect(server.log[server.log.length - 1]).toBe('GET snapshots?limit=120&offset=0');
  });

  it('keeps the rows it has when a page fails', async () => {
    healthy();
    await model.refresh();
    new FakeServer()
      .on('GET snapshots', { status: 500, body: { message: 'nope' } })
      .install();
    await model.loadMore();
    expect(ids(model)).toEqual(['s0', 's1', 's2']);
    expect(model.problem).toEqual({ kind: 'error', message: 'nope' });
  });
});

describe('SidebarModel: services', () => {
  it('lists services apart from running cells', async () => {
    healthy()
      .on('GET services', { body: { items: [service()] } })
      .on('GET running', {
        body: {
          items: [
            RUNNING,
            { ...RUNNING, id: 'sv1', container: 'c2', snapshot_status: 'serving' }
          ]
        }
      });
    await model.refresh();
    expect(model.services.map(s => s.id)).toEqual(['sv1']);
    expect(model.runningCells.map(r => r.id)).toEqual(['r1']);
    expect(model.problem).toBeNull();
  });

  it('shows a failing service list by the list, not as a problem', async () => {
    healthy().on('GET services', { status: 500, body: { message: 'store is damaged' } });
    await model.refresh();
    expect(model.servicesError).toBe('store is damaged');
    expect(model.problem).toBeNull();
    expect(ids(model)).toEqual(['s0', 's1', 's2']);
  });

  it('stops a service by its snapshot id, and reloads the services', async () => {
    const server = healthy().on('POST running/sv1/stop', { body: { stopped: [] } });
    await model.stopRun('sv1');
    expect(server.log.slice(0, 3)).toEqual([
      'POST running/sv1/stop',
      'GET running',
      'GET services'
    ]);
  });

  it('shows a snapshot asked for, loading older pages until it is listed', async () => {
    const server = new FakeServer()
      .on('GET status', { body: UP })
      .on('GET running', { body: { items: [] } })
      .on('GET services', { body: { items: [] } })
      .on('GET snapshots', call =>
        call.query.offset === '0'
          ? { body: page(PAGE, PAGE + 2) }
          : { body: page(2, PAGE + 2, PAGE) }
      )
      .install();
    await model.refresh();
    const focus = model.focus;
    expect(focus).toBeNull();
    await model.showSnapshot(`s${PAGE + 1}`);
    expect(model.focus).toEqual({ id: `s${PAGE + 1}` });
    expect(model.snapshots).toHaveLength(PAGE + 2);
    expect(server.log.filter(c => c.startsWith('GET snapshots'))).toHaveLength(2);
    // Asked again: a new focus, so its row opens again even if it was closed.
    const first = model.focus;
    await model.showSnapshot(`s${PAGE + 1}`);
    expect(model.focus).not.toBe(first);
  });
});

describe('SidebarModel: stop and delete', () => {
  it('stops a run, marked as stopping until the server answers, then reloads', async () => {
    let stoppingMeanwhile = false;
    const server = healthy().on('POST running/run%2F1/stop', () => {
      stoppingMeanwhile = model.stopping.has('run/1');
      return { body: { stopped: [] } };
    });
    await model.stopRun('run/1');
    expect(stoppingMeanwhile).toBe(true);
    expect(model.stopping.size).toBe(0);
    expect(server.log).toEqual([
      'POST running/run%2F1/stop',
      'GET running',
      'GET services',
      `GET snapshots?limit=${PAGE}&offset=0`
    ]);
    expect(server.calls[0].body).toEqual({});
  });

  it('passes on a failed stop as the server said it', async () => {
    healthy().on('POST running/r1/stop', {
      status: 500,
      body: { message: 'no such container' }
    });
    const failure = model.stopRun('r1');
    await expect(failure).rejects.toBeInstanceOf(ApiError);
    await expect(failure).rejects.toMatchObject({
      status: 500,
      message: 'no such container'
    });
    expect(model.stopping.has('r1')).toBe(false);
  });

  it('deletes a snapshot: off the list at once, then the list is reloaded', async () => {
    const server = healthy();
    await model.refresh();
    server.on('DELETE snapshots/s1', { body: { removed: summary('s1') } });
    server.on('GET snapshots', () => {
      // The reload comes after the row was dropped locally.
      expect(ids(model)).toEqual(['s0', 's2']);
      expect(model.total).toBe(2);
      return {
        body: { items: [summary('s0'), summary('s2')], total: 2, limit: 50, offset: 0 }
      };
    });
    await model.remove('s1');
    expect(server.log.slice(-2)).toEqual([
      'DELETE snapshots/s1',
      `GET snapshots?limit=${PAGE}&offset=0`
    ]);
    expect(ids(model)).toEqual(['s0', 's2']);
  });

  it('deletes a running snapshot only with force', async () => {
    const server = healthy().on('DELETE snapshots/s0', {
      body: { removed: summary('s0') }
    });
    await model.refresh();
    await model.remove('s0', true);
    expect(server.log).toContain('DELETE snapshots/s0?force=1');
  });

  it('keeps the row when the server refuses to delete it', async () => {
    healthy().on('DELETE snapshots/s0', {
      status: 409,
      body: { message: 'still running' }
    });
    await model.refresh();
    await expect(model.remove('s0')).rejects.toThrow('still running');
    expect(ids(model)).toEqual(['s0', 's1', 's2']);
    expect(model.total).toBe(3);
  });
});

describe('SidebarModel: polling', () => {
  beforeEach(() => {
    jest.useFakeTimers();
  });

  it('polls running containers, and status and snapshots every fifth time', async () => {
    const server = healthy();
    model.start();
    expect(model.isPolling).toBe(true);
    await jest.advanceTimersByTimeAsync(0);
    const first = server.calls.length;
    expect(first).toBe(4);

    await jest.advanceTimersByTimeAsync(POLL_MS);
    expect(server.log.slice(first)).toEqual(['GET running', 'GET services']);

    await jest.advanceTimersByTimeAsync(4 * POLL_MS);
    const slow = server.log.slice(first);
    expect(slow.filter(c => c === 'GET running')).toHaveLength(5);
    expect(slow.filter(c => c === 'GET services')).toHaveLength(5);
    expect(slow.filter(c => c === 'GET status')).toHaveLength(1);
    expect(slow.filter(c => c.startsWith('GET snapshots'))).toHaveLength(1);
  });

  it.each([
    ['running containers', 'GET running', { items: [] }],
    ['services', 'GET services', { items: [service()] }]
  ])('reloads snapshots as soon as the set of %s changes', async (_, route, items) => {
    const server = healthy();
    model.start();
    await jest.advanceTimersByTimeAsync(0);
    server.on(route, { body: items });
    const before = server.calls.length;
    await jest.advanceTimersByTimeAsync(POLL_MS);
    expect(server.log.slice(before)).toEqual([
      'GET running',
      'GET services',
      `GET snapshots?limit=${PAGE}&offset=0`
    ]);
  });

  it('does not reload snapshots as a service counts its requests', async () => {
    const server = healthy().on('GET services', { body: { items: [service()] } });
    model.start();
    await jest.advanceTimersByTimeAsync(0);
    expect(model.services.map(s => s.requests)).toEqual([8]);
    server.on('GET services', { body: { items: [service({ requests: 9 })] } });
    const before = server.calls.length;
    await jest.advanceTimersByTimeAsync(POLL_MS);
    expect(server.log.slice(before)).toEqual(['GET running', 'GET services']);
    expect(model.services.map(s => s.requests)).toEqual([9]);
  });

  it('does not poll while the page is hidden, nor after stop()', async () => {
    const server = healthy();
    model.start();
    await jest.advanceTimersByTimeAsync(0);
    const before = server.calls.length;
    const hidden = jest.spyOn(document, 'hidden', 'get').mockReturnValue(true);
    await jest.advanceTimersByTimeAsync(3 * POLL_MS);
    expect(server.calls.length).toBe(before);
    hidden.mockRestore();

    model.stop();
    expect(model.isPolling).toBe(false);
    await jest.advanceTimersByTimeAsync(3 * POLL_MS);
    expect(server.calls.length).toBe(before);
  });

  it('stops polling when disposed', async () => {
    const server = healthy();
    model.start();
    await jest.advanceTimersByTimeAsync(0);
    model.dispose();
    const before = server.calls.length;
    await jest.advanceTimersByTimeAsync(3 * POLL_MS);
    expect(model.isPolling).toBe(false);
    expect(server.calls.length).toBe(before);
  });
});

describe('api', () => {
  it('re-runs and exports with a POST to the snapshot', async () => {
    const server = new FakeServer()
      .on('POST snapshots/s1/rerun', {
        body: { id: 'n1', status: 'done', verified: true }
      })
      .on('POST snapshots/s1/export', { body: { path: '/tmp/s1.tar' } })
      .install();
    await expect(api.rerun('s1')).resolves.toEqual({
      id: 'n1',
      status: 'done',
      verified: true
    });
    await expect(api.export('s1')).resolves.toEqual({ path: '/tmp/s1.tar' });
    expect(server.log).toEqual(['POST snapshots/s1/rerun', 'POST snapshots/s1/export']);
  });

  it("carries the server's status and message in an ApiError", async () => {
    new FakeServer()
      .on('POST snapshots/s1/rerun', {
        status: 501,
        body: { message: 'cannot be rerun' }
      })
      .on('GET snapshots/s2', { status: 500, body: null })
      .install();
    await expect(api.rerun('s1')).rejects.toMatchObject({
      status: 501,
      message: 'cannot be rerun',
      isNotFound: false
    });
    // No JSON message: the HTTP status line stands in.
    await expect(api.snapshot('s2')).rejects.toMatchObject({
      status: 500,
      message: '500 Error'
    });
    await expect(api.logs('s3')).rejects.toMatchObject({ status: 404, isNotFound: true });
  });

  it('passes list filters as a query, leaving out empty ones', async () => {
    const server = new FakeServer().on('GET snapshots', { body: page(0, 0) }).install();
    await api.snapshots({ limit: 5, offset: 10, notebook: 'a b.ipynb', name: '' });
    expect(server.calls[0].query).toEqual({
      limit: '5',
      offset: '10',
      notebook: 'a b.ipynb'
    });
  });
});
