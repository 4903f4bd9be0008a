import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import * as React from 'react';

import {
  ApiError,
  api,
  IActionOptions,
  ILineage,
  ILogs,
  ISnapshotRecord,
  ISnapshotSummary
} from '../api';
import {
  errorText,
  isActive,
  recordMounts,
  recordPackages,
  recordTimings,
  recordWritten
} from '../format';
import { hasLineage } from '../lineage';
import { DataIn, DataOut } from './DataList';
import { LineageGraph } from './LineageGraph';
import { LogView } from './LogView';
import { MapItems } from './MapItems';
import { PackageList } from './PackageList';
import { SnapshotActions } from './SnapshotActions';
import { SnapshotFields } from './SnapshotFields';
import { TimingsList } from './TimingsList';
import { ISidebarProps } from './types';

/** An opened snapshot: its full record and logs, loaded when opened, and what to do with it. */
export function SnapshotDetails({
  summary,
  model,
  app
}: ISidebarProps & { summary: ISnapshotSummary }): JSX.Element {
  const [record, setRecord] = React.useState<ISnapshotRecord | null>(null);
  const [logs, setLogs] = React.useState<ILogs | null>(null);
  const [lineage, setLineage] = React.useState<ILineage | null>(null);
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
    // No graph when there is none, or the server is older than the route.
    api.lineage(id).then(
      l => live && setLineage(l),
      () => live && setLineage(null)
    );
    return () => {
      live = false;
    };
  }, [id, summary.status, summary.finished]);

  // The summary stands in for the record until the record arrives.
  const r: ISnapshotRecord = record || (summary as ISnapshotRecord);
  const notebookPath = r.notebook_path ?? summary.notebook_path;

  const verb = async (
    name: 'rerun' | 'export',
    label: string,
    options: IActionOptions = {}
  ) => {
    setNotice(null);
    setNotice(`${label}: working…`);
    try {
      const result = await api[name](id, options);
      setNotice(
        name === 'rerun'
          ? `${label}: ${rerunText(result)}`
          : `${label}: written to ${result.path}`
      );
      await model.refreshSnapshots();
    } catch (e) {
      // Shown where the user clicked; the server's message says what to do.
      setNotice(
        e instanceof ApiError && e.status === 501
          ? e.message
          : `${label} failed: ${errorText(e)}`
      );
    }
  };

  const copyTag = () => {
    if (r.env_image) {
      Clipboard.copyToSystem(r.env_image);
      Notification.success(`Copied ${r.env_image}`, { autoClose: 2000 });
    }
  };

  const remove = async () => {
    const active = isActive(r.status);
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

  const openNotebook = () => {
    if (notebookPath) {
      void app.commands.execute('docmanager:open', { path: notebookPath });
    }
  };

  return (
    <div className="mlc-Details">
      {error && <div className="mlc-Hint mlc-bad-text">{error}</div>}
      <SnapshotActions
        image={r.env_image}
        notebookPath={notebookPath}
        onRerun={() => void verb('rerun', 'Re-run')}
        onExport={() => void verb('export', 'Export')}
        onCopyTag={copyTag}
        onOpenNotebook={openNotebook}
        onDelete={() => void remove()}
      />
      {notice && <div className="mlc-Notice">{notice}</div>}
      {lineage && hasLineage(lineage) && (
        <div className="mlc-Lineage">
          <div className="mlc-SubTitle">
            Lineage
            {lineage.steps.length > 1 ? ` (${lineage.steps.length} steps)` : ''}
          </div>
          <LineageGraph lineage={lineage} onOpen={sid => void model.showSnapshot(sid)} />
          {lineage.steps.length > 1 && (
            <div className="mlc-Actions mlc-GraphActions">
              <button
                className="mlc-Button"
                title="Run every step that led to this snapshot again, in order"
                onClick={() => void verb('rerun', 'Re-run pipeline', { pipeline: true })}
              >
                Re-run pipeline
              </button>
              <button
                className="mlc-Button"
                title="Export every step, with a run.sh that runs them with plain docker"
                onClick={() => void verb('export', 'Export pipeline', { pipeline: true })}
              >
                Export pipeline
              </button>
            </div>
          )}
        </div>
      )}
      {/* Where it ran is known once the full record is here (summaries lack it). */}
      <SnapshotFields id={id} record={r} where={record} />
      <MapItems record={r} />
      <TimingsList timings={recordTimings(r)} />
      <PackageList packages={recordPackages(r)} />
      <DataIn mounts={recordMounts(r)} />
      <DataOut files={recordWritten(r)} />
      <LogView logs={logs} />
    </div>
  );
}

/** What a rerun answered: the new run, or for a pipeline, its steps and the first that differs. */
export function rerunText(result: any): string {
  const steps: any[] | undefined = result.pipeline?.steps;
  const differs =
    typeof result.pipeline?.first_difference === 'number'
      ? ` (step ${result.pipeline.first_difference} differs)`
      : result.verified === false
        ? ' (outputs differ)'
        : '';
  const ran = steps
    ? `${steps.length} step${steps.length === 1 ? '' : 's'} ran again, the last as`
    : 'ran again as';
  return `${ran} ${result.id}, ${result.status}${differs}`;
}
