/** Small pure formatters; they mirror `mlcontainer_magics.verbs` so CLI and sidebar agree. */

export const MISSING = '–';

function num(value: unknown): number | null {
  return typeof value === 'number' && isFinite(value) ? value : null;
}

/** `12.3s`, `4m05s`, `2h03m`. */
export function formatDuration(seconds: unknown): string {
  const s = num(seconds);
  if (s === null || s < 0) {
    return MISSING;
  }
  if (s < 60) {
    return `${s.toFixed(1)}s`;
  }
  if (s < 3600) {
    const r = Math.round(s);
    return `${Math.floor(r / 60)}m${String(r % 60).padStart(2, '0')}s`;
  }
  const r = Math.round(s);
  return `${Math.floor(r / 3600)}h${String(Math.floor((r % 3600) / 60)).padStart(2, '0')}m`;
}

/** Decimal units, as `docker images` shows sizes. */
export function formatSize(bytes: unknown): string {
  let n = num(bytes);
  if (n === null || n < 0) {
    return MISSING;
  }
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  for (const unit of units) {
    if (n < 1000 || unit === units[units.length - 1]) {
      return unit === 'B' ? `${Math.round(n)} B` : `${n.toFixed(1)} ${unit}`;
    }
    n /= 1000;
  }
  return MISSING;
}

/** Epoch seconds (or an ISO string) to a Date. */
export function toDate(value: unknown): Date | null {
  if (typeof value === 'number' && isFinite(value)) {
    return new Date(value * 1000);
  }
  if (typeof value === 'string' && value) {
    const d = new Date(value);
    return isNaN(d.getTime()) ? null : d;
  }
  return null;
}

/** "just now", "5 min ago", "3 h ago", "2 d ago", then the date. */
export function formatAgo(value: unknown, now: number = Date.now()): string {
  const d = toDate(value);
  if (!d) {
    return MISSING;
  }
  const s = Math.max(0, (now - d.getTime()) / 1000);
  if (s < 45) {
    return 'just now';
  }
  if (s < 3600) {
    return `${Math.max(1, Math.round(s / 60))} min ago`;
  }
  if (s < 86400) {
    return `${Math.round(s / 3600)} h ago`;
  }
  if (s < 7 * 86400) {
    return `${Math.round(s / 86400)} d ago`;
  }
  return d.toLocaleDateString();
}

export function formatTime(value: unknown): string {
  const d = toDate(value);
  return d ? d.toLocaleString() : MISSING;
}

/** The last path component of a notebook path. */
export function basename(path: string | null | undefined): string {
  if (!path) {
    return MISSING;
  }
  const parts = path.split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

/** A package pin from a lock entry (`{name, version}`), or a string as it is. */
export function formatPin(entry: unknown): string {
  if (typeof entry === 'string') {
    return entry;
  }
  if (entry && typeof entry === 'object') {
    const e = entry as { name?: string; version?: string };
    if (e.name) {
      return e.version ? `${e.name}==${e.version}` : e.name;
    }
  }
  return JSON.stringify(entry);
}

/** The message of an error, or the thing thrown as a string. */
export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Statuses of a run that has not ended yet. */
const ACTIVE = ['running', 'building', 'serving'];

export function isActive(status: unknown): boolean {
  return typeof status === 'string' && ACTIVE.includes(status);
}

/** Seconds since `created` (epoch seconds), or null when it is not known. */
export function elapsed(created: unknown, now: number = Date.now()): number | null {
  return typeof created === 'number' ? now / 1000 - created : null;
}

/**
 * Where a run ran: its backend, then the target's fields in order, e.g. `docker`,
 * `kubernetes (context kind-dev, namespace ml)`. Records without a backend ran on docker.
 */
export function formatWhere(
  record: { backend?: unknown; target?: unknown } | null | undefined
): string {
  if (!record) {
    return MISSING;
  }
  const backend =
    typeof record.backend === 'string' && record.backend ? record.backend : 'docker';
  const target = record.target;
  if (!target || typeof target !== 'object' || Array.isArray(target)) {
    return backend;
  }
  const parts = Object.entries(target)
    .filter(([, v]) => (typeof v === 'string' && v !== '') || typeof v === 'number')
    .map(([k, v]) => `${k} ${v}`);
  return parts.length ? `${backend} (${parts.join(', ')})` : backend;
}

/** The packages a run had: its lock, else what was captured, else what was asked for. */
export function recordPackages(record: { readonly [key: string]: unknown }): string[] {
  const { lock, captured, requirements } = record;
  const entries: unknown[] =
    (Array.isArray(lock) && lock.length ? lock : null) ||
    (Array.isArray(captured) && captured.length ? captured : null) ||
    (Array.isArray(requirements) ? requirements : []);
  return entries.map(formatPin);
}

/** The phases of a run's `timings` with their seconds, in recorded order. */
export function recordTimings(record: {
  readonly [key: string]: unknown;
}): [string, unknown][] {
  const t = record.timings;
  return t && typeof t === 'object' ? Object.entries(t) : [];
}

/** The last `max` lines of a log (all of it with `full`), and how many lines it has. */
export function tailLog(
  text: string,
  max: number,
  full = false
): { text: string; lines: number; clipped: boolean } {
  const lines = text.split('\n');
  const clipped = !full && lines.length > max;
  return {
    text: clipped ? lines.slice(-max).join('\n') : text,
    lines: lines.length,
    clipped
  };
}

/** At most `max` of a list, and how many were left off. */
export function truncate<T>(items: T[], max: number): { shown: T[]; more: number } {
  const n = Math.max(0, max);
  return { shown: items.slice(0, n), more: Math.max(0, items.length - n) };
}

/** "and 3 more" for the items a list leaves off, or nothing. */
export function moreText(more: number): string {
  return more > 0 ? `and ${more} more` : '';
}

/** The first 12 hex digits of a digest, without its algorithm: `sha256:abc…` → `abc…`. */
export function shortDigest(digest: unknown): string {
  if (typeof digest !== 'string' || !digest) {
    return MISSING;
  }
  return digest.slice(digest.indexOf(':') + 1).slice(0, 12);
}

/** A mount as a record keeps it; every field may be missing in a damaged record. */
export interface IMountLine {
  source?: unknown;
  target?: unknown;
  mode?: unknown;
  digest?: unknown;
  count?: unknown;
  size?: unknown;
}

/** The mounts of a record: its `mounts` lines that name a target, in recorded order. */
export function recordMounts(record: { readonly [key: string]: unknown }): IMountLine[] {
  const m = record.mounts;
  return Array.isArray(m)
    ? m.filter(
        (x): x is IMountLine =>
          !!x && typeof x === 'object' && typeof (x as IMountLine).target === 'string'
      )
    : [];
}

/** `/work/data (ro, 1.2 MB, 3 files)`. */
export function formatMount(mount: IMountLine): string {
  const count = num(mount.count);
  const files = count === null ? MISSING : `${count} ${count === 1 ? 'file' : 'files'}`;
  const mode = typeof mount.mode === 'string' && mount.mode ? mount.mode : MISSING;
  return `${String(mount.target)} (${mode}, ${formatSize(mount.size)}, ${files})`;
}

/** A mount's tooltip: where it came from on the host and its short digest. */
export function mountTitle(mount: IMountLine): string {
  const source =
    typeof mount.source === 'string' && mount.source ? mount.source : MISSING;
  return `from ${source}, digest ${shortDigest(mount.digest)}`;
}

/** A written file as a line: `target/relative/path`, joined with one slash. */
export function writtenPath(target: string, rel: string): string {
  if (!rel) {
    return target; // the mount is the file itself
  }
  return `${target.replace(/\/+$/, '')}/${rel.replace(/^\/+/, '')}`;
}

/** The files a record says were written, as `/work/out/model.pt (1.2 MB)`, in recorded order. */
export function recordWritten(record: { readonly [key: string]: unknown }): string[] {
  const w = record.written;
  if (!w || typeof w !== 'object' || Array.isArray(w)) {
    return [];
  }
  const lines: string[] = [];
  for (const [target, files] of Object.entries(w)) {
    if (!files || typeof files !== 'object' || Array.isArray(files)) {
      continue;
    }
    for (const [rel, entry] of Object.entries(files)) {
      const size = Array.isArray(entry) ? entry[0] : undefined;
      lines.push(`${writtenPath(target, rel)} (${formatSize(size)})`);
    }
  }
  return lines;
}

/** `1 request`, `8 requests`. */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** Whether a URL is one to link to: http or https (a record's URL is only shown otherwise). */
export function isHttpUrl(url: unknown): url is string {
  return typeof url === 'string' && /^https?:\/\/[^/\s]/i.test(url);
}

/**
 * What is known of a service: where it runs if not on docker, its replicas if not one, then
 * what its server says: `predict(x)`, `8 requests`, `1 error`, `up 5m02s`.
 */
export function serviceFacts(service: {
  entry?: unknown;
  signature?: unknown;
  requests?: unknown;
  errors?: unknown;
  uptime?: unknown;
  backend?: unknown;
  replicas?: unknown;
}): string[] {
  const parts: string[] = [];
  // Where it runs, when it is not the one local container.
  if (
    typeof service.backend === 'string' &&
    service.backend &&
    service.backend !== 'docker'
  ) {
    parts.push(service.backend);
  }
  const replicas = num(service.replicas);
  if (replicas !== null && replicas !== 1) {
    parts.push(plural(replicas, 'replica'));
  }
  const call = service.signature || service.entry;
  if (typeof call === 'string' && call) {
    parts.push(call);
  }
  const requests = num(service.requests);
  if (requests !== null) {
    parts.push(plural(requests, 'request'));
  }
  const errors = num(service.errors);
  if (errors) {
    parts.push(plural(errors, 'error'));
  }
  if (num(service.uptime) !== null) {
    parts.push(`up ${formatDuration(service.uptime)}`);
  }
  return parts;
}
