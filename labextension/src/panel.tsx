import { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import {
  caretDownIcon,
  caretRightIcon,
  ReactWidget,
  refreshIcon
} from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { ApiError, api, ILogs, IRunning, ISnapshotRecord, ISnapshotSummary } from './api';
import {
  basename,
  formatAgo,
  formatDuration,
  formatPin,
  formatSize,
  formatTime,
  MISSING
} from './format';
import { containerIcon } from './icon';
import { SidebarModel } from './model';

/** Lines of a log shown before "Show all". */
const LOG_TAIL = 200;

const STATUS_CLASS: Record<string, string> = {
  done: 'mlc-ok',
  running: 'mlc-active',
  building: 'mlc-active',
  failed: 'mlc-bad',
  oom: 'mlc-bad',
  timeout: 'mlc-bad',
  stopped: 'mlc-muted',
  interrupted: 'mlc-muted'
};

function StatusBadge(props: { status: string | null | undefined }): JSX.Element {
  const status = props.status || 'unknown';
  return (
    <span className={`mlc-Badge ${STATUS_CLASS[status] || 'mlc-muted'}`}>
      {status}
    </span>
  );
}

const ACTIVE = ['running', 'building'];

function elapsed(created: number | null): number | null {
  return typeof created === 'number' ? Date.now() / 1000 - created : null;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The sidebar widget: polls while visible, stops when hidden. */
export class MlcSidebar extends ReactWidget {
  constructor(
    readonly app: JupyterFrontEnd,
    readonly model: SidebarModel = new SidebarModel()
  ) {
    super();
    this.id = 'mlcontainer-magics-sidebar';
    this.addClass('mlc-Sidebar');
    this.title.icon = containerIcon;
    this.title.caption = 'Containerized runs (mlcontainer)';
    this.model.changed.connect(() => this.update(), this);
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.start();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.stop();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.start();
    }
  }

  protected onBeforeDetach(msg: Message): void {
    this.model.stop();
    super.onBeforeDetach(msg);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.dispose();
    super.dispose();
  }

  render(): JSX.Element {
    return <Sidebar model={this.model} app={this.app} />;
  }
}

interface ISidebarProps {
  model: SidebarModel;
  app: JupyterFrontEnd;
}

function Sidebar({ model, app }: ISidebarProps): JSX.Element {
  const problem = model.problem;
  // A new user: nothing to list (an engine that is down does not change that).
  const empty =
    !model.loading &&
    (!problem || problem.kind === 'engine-down') &&
    model.total === 0 &&
    model.running.length === 0;
  return (
    <div className="mlc-Panel">
      <header className="mlc-Header">
        <h2 className="mlc-Title">Containerized runs</h2>
        <button
          className="mlc-IconButton"
          title="Refresh"
          aria-label="Refresh"
          onClick={() => void model.refresh()}
        >
          <refreshIcon.react tag="span" />
        </button>
      </header>
      {problem && <ProblemBanner model={model} />}
      {problem?.kind !== 'no-extension' && (
        <>
          {model.loading && <div className="mlc-Hint">Loading…</div>}
          {empty ? (
            <EmptyState />
          ) : (
            <>
              <RunningSection model={model} app={app} />
              <SnapshotSection model={model} app={app} />
            </>
          )}
        </>
      )}
    </div>
  );
}

function ProblemBanner({ model }: { model: SidebarModel }): JSX.Element | null {
  const problem = model.problem;
  if (!problem) {
    return null;
  }
  if (problem.kind === 'no-extension') {
    return (
      <div className="mlc-Banner mlc-Banner-error" role="alert">
        <strong>Server extension not installed.</strong>
        <p>
          JupyterLab answers 404 for <code>/mlcontainer/</code>: the
          mlcontainer-magics server extension is not installed or not enabled
          in the Python environment running JupyterLab. Install it there (
          <code>pip install mlcontainer-magics</code>), check{' '}
          <code>jupyter server extension list</code>, and restart JupyterLab.
        </p>
      </div>
    );
  }
  if (problem.kind === 'engine-down') {
    return (
      <div className="mlc-Banner mlc-Banner-warn" role="alert">
        <strong>
          Docker engine is down: run <code>mlcontainer doctor --fix</code>
        </strong>
        <p>
          Past snapshots are still listed; running and new runs need the
          engine.
        </p>
        {problem.message && (
          <details>
            <summary>Details</summary>
            <p className="mlc-Small">{problem.message}</p>
          </details>
        )}
      </div>
    );
  }
  return (
    <div className="mlc-Banner mlc-Banner-error" role="alert">
      <strong>Cannot read snapshots.</strong>
      <p className="mlc-Small">{problem.message}</p>
    </div>
  );
}

function EmptyState(): JSX.Element {
  return (
    <div className="mlc-Empty">
      <containerIcon.react tag="div" className="mlc-EmptyIcon" />
      <h3>No containerized runs yet</h3>
      <p>Run a notebook cell in its own Docker container:</p>
      <ol>
        <li>
          Load the magics once per notebook:
          <pre>%load_ext mlcontainer_magics</pre>
        </li>
        <li>
          Start a cell with <code>%%containerize</code>:
          <pre>
            {'%%containerize --name hello\nimport sys\nprint("hello from", sys.version)'}
          </pre>
        </li>
      </ol>
      <p>
        Every run is kept as a snapshot and shows up here, with its packages,
        timings and logs.
      </p>
    </div>
  );
}

function RunningSection({ model, app }: ISidebarProps): JSX.Element | null {
  if (model.problem?.kind === 'engine-down') {
    return null;
  }
  return (
    <section className="mlc-Section" aria-label="Running">
      <h3 className="mlc-SectionTitle">
        Running <span className="mlc-Count">{model.running.length}</span>
      </h3>
      {model.runningError && (
        <div className="mlc-Hint mlc-bad-text">{model.runningError}</div>
      )}
      {model.running.length === 0 ? (
        <div className="mlc-Hint">Nothing is running.</div>
      ) : (
        <ul className="mlc-List">
          {model.running.map(r => (
            <RunningRow key={`${r.id}-${r.container}`} run={r} model={model} app={app} />
          ))}
        </ul>
      )}
    </section>
  );
}

function RunningRow(props: {
  run: IRunning;
  model: SidebarModel;
  app: JupyterFrontEnd;
}): JSX.Element {
  const { run, model } = props;
  const stopping = model.stopping.has(run.id);
  const stop = async () => {
    try {
      await model.stopRun(run.id);
      Notification.success(`Stopped ${run.name || run.id}.`, { autoClose: 3000 });
    } catch (e) {
      Notification.error(`Could not stop ${run.name || run.id}: ${errorText(e)}`);
    }
  };
  return (
    <li className="mlc-Row mlc-RunningRow" data-snapshot={run.id}>
      <div className="mlc-RowMain">
        <span className="mlc-Pulse" aria-hidden="true" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name">{run.name || run.id}</span>
            <StatusBadge status={run.state} />
          </div>
          <div className="mlc-RowMeta">
            {run.notebook ? basename(run.notebook) + ' · ' : ''}
            {run.status || MISSING} · {run.container}
          </div>
        </div>
        <button
          className="mlc-Button mlc-Button-warn"
          disabled={stopping}
          onClick={() => void stop()}
          title={`Stop container ${run.container}`}
        >
          {stopping ? 'Stopping…' : 'Stop'}
        </button>
      </div>
    </li>
  );
}

function SnapshotSection({ model, app }: ISidebarProps): JSX.Element {
  return (
    <section className="mlc-Section" aria-label="Snapshots">
      <h3 className="mlc-SectionTitle">
        Snapshots <span className="mlc-Count">{model.total}</span>
      </h3>
      {model.snapshots.length === 0 && !model.loading ? (
        <div className="mlc-Hint">No snapshots yet.</div>
      ) : (
        <ul className="mlc-List">
          {model.snapshots.map(s => (
            <SnapshotRow key={s.id} snapshot={s} model={model} app={app} />
          ))}
        </ul>
      )}
      {model.snapshots.length < model.total && (
        <button className="mlc-Button mlc-More" onClick={() => void model.loadMore()}>
          Show more ({model.total - model.snapshots.length} older)
        </button>
      )}
    </section>
  );
}

interface IRowProps {
  snapshot: ISnapshotSummary;
  model: SidebarModel;
  app: JupyterFrontEnd;
}

function SnapshotRow({ snapshot, model, app }: IRowProps): JSX.Element {
  const [open, setOpen] = React.useState(false);
  const s = snapshot;
  const Caret = open ? caretDownIcon : caretRightIcon;
  return (
    <li className={`mlc-Row ${open ? 'mlc-open' : ''}`} data-snapshot={s.id}>
      <button
        className="mlc-RowMain mlc-RowToggle"
        aria-expanded={open}
        onClick={() => setOpen(!open)}
      >
        <Caret.react tag="span" className="mlc-Caret" />
        <div className="mlc-RowText">
          <div className="mlc-RowTitle">
            <span className="mlc-Name" title={s.id}>
              {s.name || s.id.slice(0, 12)}
            </span>
            <StatusBadge status={s.status} />
            <span className="mlc-When" title={formatTime(s.created)}>
              {formatAgo(s.created)}
            </span>
          </div>
          <div className="mlc-RowMeta" title={s.notebook || ''}>
            {basename(s.notebook)} ·{' '}
            {ACTIVE.includes(s.status || '')
              ? `${s.status} for ${formatDuration(elapsed(s.created))}`
              : formatDuration(s.duration)}
            {s.image_size !== null && s.image_size !== undefined
              ? ` · ${formatSize(s.image_size)}`
              : ''}
          </div>
        </div>
      </button>
      {open && <SnapshotDetails summary={s} model={model} app={app} />}
    </li>
  );
}

function SnapshotDetails({
  summary,
  model,
  app
}: {
  summary: ISnapshotSummary;
  model: SidebarModel;
  app: JupyterFrontEnd;
}): JSX.Element {
  const [record, setRecord] = React.useState<ISnapshotRecord | null>(null);
  const [logs, setLogs] = React.useState<ILogs | null>(null);
  const [fullLog, setFullLog] = React.useState(false);
  const [notice, setNotice] = React.useState<string | null>(null);
  const [error, setError] = React.useState<string | null>(null);
  const id = summary.id;

  React.useEffect(() => {
    let live = true;
    api.snapshot(id).then(
      r => live && setRecord(r),
      e => live && setError(errorText(e))
    );
    api.logs(id).then(
      l => live && setLogs(l),
      () => undefined
    );
    return () => {
      live = false;
    };
  }, [id, summary.status, summary.finished]);

  const r: ISnapshotRecord = record || (summary as ISnapshotRecord);
  const notebookPath = r.notebook_path ?? summary.notebook_path;

  const verb = async (name: 'rerun' | 'export', label: string) => {
    setNotice(null);
    setNotice(`${label}: working…`);
    try {
      const result = await api[name](id);
      setNotice(
        name === 'rerun'
          ? `${label}: ran again as ${result.id}, ${result.status}` +
              (result.verified === false ? ' (outputs differ)' : '')
          : `${label}: written to ${result.path}`
      );
      await model.refreshSnapshots();
    } catch (e) {
      // Shown where the user clicked; the server's message says what to do.
      setNotice(e instanceof ApiError && e.status === 501 ? e.message : `${label} failed: ${errorText(e)}`);
    }
  };

  const copyTag = () => {
    if (r.env_image) {
      Clipboard.copyToSystem(r.env_image);
      Notification.success(`Copied ${r.env_image}`, { autoClose: 2000 });
    }
  };

  const remove = async () => {
    const active = r.status === 'running' || r.status === 'building';
    const answer = await showDialog({
      title: 'Delete snapshot?',
      body: `Delete ${r.name ? `"${r.name}" (${id})` : id}: its record and files. ${
        active ? 'It is still ' + r.status + '; its container is not stopped. ' : ''
      }This cannot be undone.`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Delete' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await model.remove(id, active);
    } catch (e) {
      Notification.error(`Could not delete ${id}: ${errorText(e)}`);
    }
  };

  const open = () => {
    if (notebookPath) {
      void app.commands.execute('docmanager:open', { path: notebookPath });
    }
  };

  const packages: string[] = (
    (Array.isArray(r.lock) && r.lock.length ? r.lock : null) ||
    (Array.isArray(r.captured) && r.captured.length ? r.captured : null) ||
    (Array.isArray(r.requirements) ? r.requirements : [])
  ).map(formatPin);
  const timings: [string, unknown][] =
    r.timings && typeof r.timings === 'object' ? Object.entries(r.timings) : [];
  const logText = logs?.logs ?? '';
  const logLines = logText.split('\n');
  const clipped = !fullLog && logLines.length > LOG_TAIL;
  const shownLog = clipped ? logLines.slice(-LOG_TAIL).join('\n') : logText;

  return (
    <div className="mlc-Details">
      {error && <div className="mlc-Hint mlc-bad-text">{error}</div>}
      <div className="mlc-Actions">
        <button className="mlc-Button" onClick={() => void verb('rerun', 'Re-run')}>
          Re-run
        </button>
        <button className="mlc-Button" onClick={() => void verb('export', 'Export')}>
          Export
        </button>
        <button
          className="mlc-Button"
          disabled={!r.env_image}
          onClick={copyTag}
          title={r.env_image || 'No image recorded'}
        >
          Copy image tag
        </button>
        <button
          className="mlc-Button"
          disabled={!notebookPath}
          onClick={open}
          title={notebookPath ? `Open ${notebookPath}` : 'The notebook is outside the server root'}
        >
          Open notebook
        </button>
        <button className="mlc-Button mlc-Button-danger" onClick={() => void remove()}>
          Delete
        </button>
      </div>
      {notice && <div className="mlc-Notice">{notice}</div>}
      <dl className="mlc-Fields">
        <dt>Id</dt>
        <dd className="mlc-Mono">{id}</dd>
        <dt>Status</dt>
        <dd>
          {r.status || MISSING}
          {typeof r.exit_code === 'number' ? ` (exit ${r.exit_code})` : ''}
          {r.reason ? ` – ${r.reason}` : ''}
        </dd>
        <dt>Notebook</dt>
        <dd title={r.notebook || ''}>{r.notebook || MISSING}</dd>
        <dt>Started</dt>
        <dd>{formatTime(r.created)}</dd>
        <dt>Duration</dt>
        <dd>{formatDuration(r.duration)}</dd>
        <dt>Image</dt>
        <dd className="mlc-Mono" title={r.env_image || ''}>
          {r.env_image || MISSING} ({formatSize(r.image_size)})
        </dd>
        {r.base_image && (
          <>
            <dt>Base</dt>
            <dd className="mlc-Mono">{r.base_image}</dd>
          </>
        )}
      </dl>
      {timings.length > 0 && (
        <>
          <h4 className="mlc-SubTitle">Timings</h4>
          <dl className="mlc-Fields">
            {timings.map(([phase, secs]) => (
              <React.Fragment key={phase}>
                <dt>{phase}</dt>
                <dd>{formatDuration(secs)}</dd>
              </React.Fragment>
            ))}
          </dl>
        </>
      )}
      <h4 className="mlc-SubTitle">Packages ({packages.length})</h4>
      {packages.length ? (
        <ul className="mlc-Packages">
          {packages.map(p => (
            <li key={p} className="mlc-Pkg mlc-Mono">
              {p}
            </li>
          ))}
        </ul>
      ) : (
        <div className="mlc-Hint">None recorded.</div>
      )}
      <h4 className="mlc-SubTitle">Logs</h4>
      {logs === null ? (
        <div className="mlc-Hint">Loading…</div>
      ) : logText ? (
        <>
          {clipped && (
            <button className="mlc-Link" onClick={() => setFullLog(true)}>
              Show all {logLines.length} lines
            </button>
          )}
          <pre className="mlc-Log">{shownLog}</pre>
        </>
      ) : (
        <div className="mlc-Hint">No output.</div>
      )}
    </div>
  );
}
