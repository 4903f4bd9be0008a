import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, IRunning, IService, ISnapshotSummary, IStatus, api } from './api';
import { errorText } from './format';

/** What stands between the user and the sidebar working, if anything. */
export type Problem =
  | { kind: 'no-extension' }
  | { kind: 'engine-down'; message: string }
  | { kind: 'error'; message: string };

/** How often running containers are polled while the panel is visible. */
export const POLL_MS = 2000;
/** Status and the snapshot list are refreshed every this many polls (and on changes). */
const SLOW_EVERY = 5;
export const PAGE = 50;

/**
 * The sidebar's state, refreshed from the server extension.
 *
 * Polls `running` and `services` every 2 s while `start()`ed (the panel is visible), and
 * `status` plus the snapshot list less often or when the set of running containers or
 * services changes.
 */
export class SidebarModel {
  status: IStatus | null = null;
  problem: Problem | null = null;
  running: IRunning[] = [];
  runningError: string | null = null;
  services: IService[] = [];
  servicesError: string | null = null;
  /** The snapshot last asked for from a running run or a service (a new object each time). */
  focus: { id: string } | null = null;
  snapshots: ISnapshotSummary[] = [];
  total = 0;
  /** True until the first answer (or failure) arrives. */
  loading = true;
  stopping = new Set<string>();

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** The running containers of cells; those of services are listed with the services. */
  get runningCells(): IRunning[] {
    return this.running.filter(r => r.snapshot_status !== 'serving');
  }

  get isPolling(): boolean {
    return this._timer !== null;
  }

  /** Start polling (the panel became visible). */
  start(): void {
    if (this._timer !== null) {
      return;
    }
    this._tick = 0;
    void this.refresh();
    this._timer = window.setInterval(() => void this._poll(), POLL_MS);
  }

  /** Stop polling (the panel was hidden or disposed). */
  stop(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }

  dispose(): void {
    this.stop();
    Signal.clearData(this);
  }

  /** Everything at once: status, running, snapshots. */
  async refresh(): Promise<void> {
    await this._refreshStatus();
    if (this.problem?.kind !== 'no-extension') {
      await Promise.all([
        this._refreshRunning(),
        this._refreshServices(),
        this.refreshSnapshots()
      ]);
    }
    this.loading = false;
    this._emit();
  }

  /** Reload the snapshot list, keeping as many rows as are shown now (at least a page). */
  async refreshSnapshots(): Promise<void> {
    const limit = Math.max(PAGE, Math.min(this.snapshots.length, 500));
    try {
      const page = await api.snapshots({ limit, offset: 0 });
      this.snapshots = page.items;
      this.total = page.total;
      if (this.problem?.kind === 'error') {
        this.problem = null;
      }
    } catch (e) {
      this._fail(e);
    }
    this._emit();
  }

  /** Append the next page of snapshots. */
  async loadMore(): Promise<void> {
    try {
      const page = await api.snapshots({
        limit: PAGE,
        offset: this.snapshots.length
      });
      const known = new Set(this.snapshots.map(s => s.id));
      this.snapshots = this.snapshots.concat(page.items.filter(s => !known.has(s.id)));
      this.total = page.total;
    } catch (e) {
      this._fail(e);
    }
    this._emit();
  }

  /** Open a snapshot's row and bring it into view, loading older pages until it is listed. */
  async showSnapshot(id: string): Promise<void> {
    while (!this.snapshots.some(s => s.id === id) && this.snapshots.length < this.total) {
      const before = this.snapshots.length;
      await this.loadMore();
      if (this.snapshots.length === before) {
        break; // a page failed or added nothing: show what there is
      }
    }
    this.focus = { id };
    this._emit();
  }

  /** Stop a run, or a service (a run that serves): by its snapshot id. */
  async stopRun(id: string): Promise<void> {
    this.stopping.add(id);
    this._emit();
    try {
      await api.stop(id);
    } finally {
      this.stopping.delete(id);
      await Promise.all([this._refreshRunning(), this._refreshServices()]);
      await this.refreshSnapshots();
    }
  }

  async remove(id: string, force = false): Promise<void> {
    await api.remove(id, force);
    this.snapshots = this.snapshots.filter(s => s.id !== id);
    this.total = Math.max(0, this.total - 1);
    this._emit();
    await this.refreshSnapshots();
  }

  private async _poll(): Promise<void> {
    if (this._busy || document.hidden) {
      return; // the previous poll has not answered yet, or nobody can see the page
    }
    this._busy = true;
    try {
      this._tick += 1;
      const slow = this._tick % SLOW_EVERY === 0;
      if (slow || this.problem) {
        await this._refreshStatus();
      }
      if (this.problem?.kind === 'no-extension') {
        return;
      }
      const changes = await Promise.all([
        this._refreshRunning(),
        this._refreshServices()
      ]);
      if (slow || changes.some(Boolean)) {
        await this.refreshSnapshots();
      }
    } finally {
      this._busy = false;
      this._emit();
    }
  }

  private async _refreshStatus(): Promise<void> {
    try {
      this.status = await api.status();
      this.problem = this.status.engine.up
        ? null
        : {
            kind: 'engine-down',
            message: this.status.engine.message || ''
          };
    } catch (e) {
      this._fail(e);
    }
  }

  /** Reload running containers; whether the set of running snapshots changed. */
  private async _refreshRunning(): Promise<boolean> {
    if (this.problem?.kind === 'engine-down') {
      const had = this.running.length > 0;
      this.running = [];
      return had;
    }
    const before = this.running.map(r => r.id).join(',');
    try {
      const { items } = await api.running();
      this.running = items;
      this.runningError = null;
    } catch (e) {
      if (e instanceof ApiError && e.status === 503) {
        this.problem = { kind: 'engine-down', message: e.message };
        this.running = [];
      } else if (e instanceof ApiError && e.isNotFound) {
        this._fail(e);
      } else {
        this.runningError = errorText(e);
      }
    }
    return this.running.map(r => r.id).join(',') !== before;
  }

  /** Reload the services; whether the set of them changed. A failure shows by the list. */
  private async _refreshServices(): Promise<boolean> {
    const before = this.services.map(s => s.id).join(',');
    try {
      this.services = (await api.services()).items;
      this.servicesError = null;
    } catch (e) {
      this.servicesError = errorText(e);
    }
    return this.services.map(s => s.id).join(',') !== before;
  }

  private _fail(e: unknown): void {
    if (e instanceof ApiError && e.isNotFound) {
      // Our routes are missing: the server extension is not installed or not enabled.
      this.problem = { kind: 'no-extension' };
    } else {
      this.problem = {
        kind: 'error',
        message: errorText(e)
      };
    }
  }

  private _emit(): void {
    this._changed.emit();
  }

  private _timer: number | null = null;
  private _tick = 0;
  private _busy = false;
  private _changed = new Signal<this, void>(this);
}
