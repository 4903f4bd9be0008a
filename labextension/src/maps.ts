/** A map's (`--map NAME`) items as the sidebar shows them: pure, so Jest checks them. */

import type { IMapSummary } from './api';
import { formatDuration, MISSING, plural } from './format';

export type { IMapSummary };

/** One item as the map's record keeps it (core/maps.py `item_record`). */
export interface IMapItem {
  index: number;
  /** done, failed, timeout, oom, stopped, killed… */
  reason: string;
  exitCode: number | null;
  attempts: number;
  duration: number | null;
  /** For an item that did not end done: why, then the first lines of its traceback. */
  error: string | null;
}

function num(value: unknown): number | null {
  return typeof value === 'number' && isFinite(value) ? value : null;
}

/** `map · 12 items · 1 failed`; `map over shards` while its items run (no count yet). */
export function mapSummaryText(map: IMapSummary | null | undefined): string {
  if (!map) {
    return '';
  }
  const count = num(map.count);
  if (count === null) {
    return map.name ? `map over ${map.name}` : 'map';
  }
  const parts = ['map', plural(count, 'item')];
  const failed = num(map.failed);
  if (failed) {
    parts.push(`${failed} failed`);
  }
  return parts.join(' · ');
}

/** The items of a record's `map` block, in index order; damaged entries are left out. */
export function mapItems(record: { readonly [key: string]: unknown }): IMapItem[] {
  const block = record.map as { items?: unknown } | null | undefined;
  const raw = block && typeof block === 'object' ? block.items : null;
  if (!Array.isArray(raw)) {
    return [];
  }
  const items: IMapItem[] = [];
  for (const x of raw) {
    if (!x || typeof x !== 'object' || num((x as any).index) === null) {
      continue;
    }
    const e = x as { [key: string]: unknown };
    items.push({
      index: e.index as number,
      reason: typeof e.reason === 'string' && e.reason ? e.reason : 'unknown',
      exitCode: num(e.exit_code),
      attempts: num(e.attempts) ?? 1,
      duration: num(e.duration),
      error: typeof e.error === 'string' && e.error ? e.error : null
    });
  }
  return items.sort((a, b) => a.index - b.index);
}

/** The colour of an item's status: `ok`, `bad` or `off` (stopped before it ended). */
export function itemTone(reason: string): 'ok' | 'bad' | 'off' {
  if (reason === 'done') {
    return 'ok';
  }
  return ['stopped', 'killed', 'interrupted', 'unknown'].includes(reason) ? 'off' : 'bad';
}

/** `11 done, 1 failed` (each reason that occurs, done first). */
export function itemCounts(items: IMapItem[]): string {
  const counts = new Map<string, number>();
  for (const item of items) {
    counts.set(item.reason, (counts.get(item.reason) || 0) + 1);
  }
  const reasons = [...counts.keys()].sort((a, b) =>
    a === 'done' ? -1 : b === 'done' ? 1 : a.localeCompare(b)
  );
  return reasons.map(r => `${counts.get(r)} ${r}`).join(', ');
}

/** An item's facts after its index: `1.5s`, `1.5s · 2 attempts`; `compact`: `1.5s ×2`, for
 * the items' grid (whose cells say it in full as their tooltip). */
export function itemFacts(item: IMapItem, compact = false): string {
  const parts = [item.duration === null ? MISSING : formatDuration(item.duration)];
  if (item.attempts > 1) {
    parts.push(compact ? `×${item.attempts}` : plural(item.attempts, 'attempt'));
  }
  return parts.join(compact ? ' ' : ' · ');
}

/** A failed item's line: `item 7 · failed · exit 1 · 2 attempts · 2.6s`. */
export function failedItemTitle(item: IMapItem): string {
  const parts = [`item ${item.index}`, item.reason];
  if (item.exitCode !== null) {
    parts.push(`exit ${item.exitCode}`);
  }
  parts.push(itemFacts(item));
  return parts.join(' · ');
}

/**
 * What a failed item's error says in one line: the last non-blank line of its traceback
 * (`KeyError: 'n'`), else its first line; and all its lines, for when it is opened.
 */
export function errorLines(error: string | null): { last: string; lines: string[] } {
  const lines = (error || '').replace(/\s+$/, '').split('\n');
  const shown = lines.filter(line => line.trim() !== '');
  return { last: shown.length ? shown[shown.length - 1].trim() : '', lines };
}

/** The running list's line for a map: `map · 4 items running`. */
export function runningMapText(items: unknown): string {
  const n = num(items);
  return n === null ? '' : `map · ${plural(n, 'item')} running`;
}
