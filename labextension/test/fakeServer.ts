/**
 * A fake of the server extension behind the global `fetch`: answers by route, and records
 * every request, so tests run the real `requestAPI` and `api` against it.
 */

export interface ICall {
  method: string;
  /** The path under `/mlcontainer/`, still URL-encoded, e.g. `snapshots/a%2Fb/logs`. */
  path: string;
  /** The query, less the cache-busting timestamp that ServerConnection adds. */
  query: Record<string, string>;
  body: unknown;
}

export interface IReply {
  status?: number;
  body?: unknown;
}

export type Handler = (call: ICall) => IReply | Promise<IReply>;

export class FakeServer {
  readonly calls: ICall[] = [];

  /** Answer `METHOD path` (e.g. `GET status`) with a reply, or what a handler returns. */
  on(route: string, reply: IReply | Handler): this {
    this._routes.set(route, typeof reply === 'function' ? reply : () => reply);
    return this;
  }

  /** Let `fetch` itself fail, as when the server cannot be reached. */
  unreachable(): this {
    this._down = true;
    return this;
  }

  /** Calls as `METHOD path?query`, in order, for short assertions. */
  get log(): string[] {
    return this.calls.map(c => {
      const q = new URLSearchParams(c.query).toString();
      return `${c.method} ${c.path}${q ? `?${q}` : ''}`;
    });
  }

  install(): this {
    globalThis.fetch = this.fetch as typeof fetch;
    return this;
  }

  readonly fetch = async (input: RequestInfo | URL): Promise<Response> => {
    const request = input as Request;
    if (this._down) {
      throw new TypeError('Failed to fetch');
    }
    const url = new URL(request.url);
    const path = url.pathname.replace(/^\/mlcontainer\//, '');
    const query: Record<string, string> = {};
    url.searchParams.forEach((value, key) => {
      if (!/^\d+$/.test(key)) {
        query[key] = value;
      }
    });
    const text = await request.text();
    const call: ICall = {
      method: request.method,
      path,
      query,
      body: text ? JSON.parse(text) : null
    };
    this.calls.push(call);
    const handler = this._routes.get(`${call.method} ${path}`);
    const reply: IReply = handler ? await handler(call) : { status: 404, body: null };
    const status = reply.status ?? 200;
    const body = reply.body === undefined ? {} : reply.body;
    return new Response(body === null ? '' : JSON.stringify(body), {
      status,
      statusText: status === 404 ? 'Not Found' : status >= 400 ? 'Error' : 'OK',
      headers: { 'Content-Type': 'application/json' }
    });
  };

  private _routes = new Map<string, Handler>();
  private _down = false;
}

/** A snapshot summary with defaults for what a test does not care about. */
export function summary(id: string, extra: Record<string, unknown> = {}): any {
  return {
    id,
    name: null,
    notebook: null,
    notebook_path: null,
    status: 'done',
    created: 1_700_000_000,
    finished: 1_700_000_010,
    duration: 10,
    exit_code: 0,
    env_image: null,
    image_size: null,
    session: null,
    ...extra
  };
}

/** A service as `GET services` lists it ("ocr", snapshot sv1, answering), with `extra`. */
export function service(extra: Record<string, unknown> = {}): any {
  return {
    id: 'sv1',
    name: 'ocr',
    url: 'http://127.0.0.1:8123',
    port: 8123,
    entry: 'predict',
    replicas: 1,
    backend: 'docker',
    status: 'serving',
    created: 1_700_000_000,
    notebook: 'nb/serve.ipynb',
    notebook_path: 'nb/serve.ipynb',
    stop_requested: false,
    answering: true,
    message: null,
    uptime: 302,
    requests: 8,
    errors: 1,
    started: '2026-12-01T10:00:00+00:00',
    signature: 'predict(x)',
    python: '3.11',
    lock_digest: null,
    ...extra
  };
}

/** A page of `n` snapshots, ids `<prefix>0`… starting at `from`. */
export function page(n: number, total: number, from = 0, prefix = 's'): any {
  const items = Array.from({ length: n }, (_, i) => summary(`${prefix}${from + i}`));
  return { items, total, limit: n, offset: from };
}

export const UP = {
  version: '0.1.0',
  engine: { up: true, version: '27.0', message: null },
  store: { root: '/tmp/store', total: 0, message: null }
};

export const DOWN = {
  ...UP,
  engine: { up: false, version: null, message: 'Cannot connect to the Docker daemon' }
};
