import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The server extension's namespace under the server's base URL. */
export const API_NAMESPACE = 'mlcontainer';

/** What the snapshots list says of a map (`GET snapshots`' `map`); null for other runs. */
export interface IMapSummary {
  name: string | null;
  /** Its items; null until they ended. */
  count: number | null;
  /** Its items that did not end done; null until they ended. */
  failed: number | null;
  parallel: number | null;
}

/** A snapshot summary, as `GET snapshots` lists them (newest first). */
export interface ISnapshotSummary {
  id: string;
  name: string | null;
  notebook: string | null;
  notebook_path: string | null;
  status: string | null;
  created: number | null;
  finished: number | null;
  duration: number | null;
  exit_code: number | null;
  env_image: string | null;
  image_size: number | null;
  session: string | null;
  /** A map's (`--map`): its items and how many failed; null or absent for other runs. */
  map?: IMapSummary | null;
}

/** A folder or file a cell saw, as its record keeps it (one line per mount). */
export interface IMount {
  /** The path on the host. */
  source: string;
  /** The path in the container, e.g. `/work/data`. */
  target: string;
  mode: 'ro' | 'rw';
  /** Of the whole tree, e.g. `sha256:…`. */
  digest: string;
  /** Files, and their bytes. */
  count: number;
  size: number;
}

/** Files a cell wrote in writable mounts: `{target: {relative path: [size, digest]}}`. */
export type IWritten = Record<string, Record<string, [number, string]>>;

/** A full record: the summary plus whatever else the run kept. */
export interface ISnapshotRecord extends ISnapshotSummary {
  /** Where it ran: "docker" or "kubernetes"; absent in older records, which ran on docker. */
  backend?: string | null;
  /** Which engine or cluster, e.g. `{engine: "unix:///…"}`, `{context, namespace}`. */
  target?: Record<string, string> | null;
  /** The data the cell saw; absent in older records. */
  mounts?: IMount[] | null;
  /** What it wrote in writable mounts; absent in older records. */
  written?: IWritten | null;
  [key: string]: any;
}

export interface ISnapshotPage {
  items: ISnapshotSummary[];
  total: number;
  limit: number;
  offset: number;
}

export interface ILogs {
  id: string;
  logs: string;
  stdout: string;
  stderr: string;
}

/** A running container that the product labelled, with its live state. */
export interface IRunning {
  id: string;
  container: string;
  container_name: string | null;
  name: string | null;
  namespace: string | null;
  image: string | null;
  state: string | null;
  status: string | null;
  started: string | null;
  /** A map's item containers running now: a map is one entry. */
  items?: number | null;
  notebook?: string | null;
  notebook_path?: string | null;
  snapshot_status?: string | null;
}

/** A snapshot that serves its cell over HTTP (status `serving`), and what its server said. */
export interface IService {
  /** The snapshot id: the run that Stop stops. */
  id: string;
  name: string | null;
  /** Where to call it, e.g. `http://127.0.0.1:8123`. */
  url: string | null;
  port: number | null;
  /** The function it calls, e.g. `predict`. */
  entry: string | null;
  replicas: number | null;
  backend: string;
  status: string | null;
  created: number | null;
  notebook: string | null;
  notebook_path: string | null;
  /** A stop was asked for: its kernel records the end once the container ends. */
  stop_requested: boolean;
  /** Whether its server answered `GET {url}/metadata` just now; `message` says why not. */
  answering: boolean;
  message: string | null;
  /** Seconds since its server started. */
  uptime: number | null;
  requests: number | null;
  errors: number | null;
  started: string | null;
  signature: string | null;
  python: string | null;
  lock_digest: string | null;
}

/** A snapshot in a lineage graph (`GET lineage/{id}`); a parent removed since is `missing`. */
export interface ILineageNode {
  id: string;
  /** Its place in the run order, from 1 (children have none). */
  step?: number;
  name?: string | null;
  status?: string | null;
  created?: number | null;
  missing?: boolean;
  /** Its `--in` names, in order. */
  inputs?: (string | null)[];
  /** The inputs whose values came from the notebook. */
  notebook?: { input: string | null; digest: string | null }[];
}

/** A value from one snapshot's `--out` to another's `--in`. */
export interface ILineageEdge {
  from: string;
  to: string;
  output: string | null;
  input: string | null;
  digest: string | null;
}

/** The steps that led to a snapshot (in run order), and the snapshots that took its values. */
export interface ILineage {
  snapshot: string;
  steps: string[];
  nodes: ILineageNode[];
  edges: ILineageEdge[];
  children: ILineageNode[];
  child_edges: ILineageEdge[];
}

/** What rerun and export take: `pipeline` acts on every step that led to the snapshot. */
export interface IActionOptions {
  pipeline?: boolean;
  verify?: boolean;
}

export interface IStatus {
  version: string;
  engine: {
    up: boolean;
    version: string | null;
    message: string | null;
  };
  store: { root: string; total: number | null; message: string | null };
}

/** An error answer from the server: its HTTP status and its `message`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The route does not exist: the server extension is not installed/enabled. */
  get isNotFound(): boolean {
    return this.status === 404;
  }
}

/**
 * Call the server extension and return its JSON answer.
 *
 * `ServerConnection.makeRequest` adds the token and the XSRF header, so writes pass
 * jupyter_server's checks. Errors become `ApiError` carrying the server's message.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_NAMESPACE, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, `Cannot reach the Jupyter server: ${error}`);
  }
  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data as T;
}

function query(params: Record<string, string | number | undefined>): string {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  return parts.length ? `?${parts.join('&')}` : '';
}

const ref = (id: string) => encodeURIComponent(id);
const post = (body: unknown = {}): RequestInit => ({
  method: 'POST',
  body: JSON.stringify(body)
});

/** The REST API, one function per route. */
export const api = {
  status: () => requestAPI<IStatus>('status'),
  snapshots: (opts: {
    limit?: number;
    offset?: number;
    notebook?: string;
    name?: string;
  }) => requestAPI<ISnapshotPage>(`snapshots${query(opts)}`),
  snapshot: (id: string) => requestAPI<ISnapshotRecord>(`snapshots/${ref(id)}`),
  logs: (id: string) => requestAPI<ILogs>(`snapshots/${ref(id)}/logs`),
  remove: (id: string, force = false) =>
    requestAPI<{ removed: ISnapshotRecord }>(
      `snapshots/${ref(id)}${force ? '?force=1' : ''}`,
      { method: 'DELETE' }
    ),
  lineage: (id: string) => requestAPI<ILineage>(`lineage/${ref(id)}`),
  rerun: (id: string, options: IActionOptions = {}) =>
    requestAPI<any>(`snapshots/${ref(id)}/rerun`, post(options)),
  export: (id: string, options: IActionOptions = {}) =>
    requestAPI<any>(`snapshots/${ref(id)}/export`, post(options)),
  running: () => requestAPI<{ items: IRunning[] }>('running'),
  services: () => requestAPI<{ items: IService[] }>('services'),
  stop: (id: string) =>
    requestAPI<{ stopped: IRunning[] }>(`running/${ref(id)}/stop`, post())
};
