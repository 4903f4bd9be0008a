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
const ACTIVE = ['running', 'building'];

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
